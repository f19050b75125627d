"""How the page cache holds a file: pages in large folios against single pages.

    .venv/bin/python tools/folios.py FILE [MiB]

Maps the first MiB (default 64) of FILE, touches every page, and classifies each page's
frame through /proc/self/pagemap and /proc/kpageflags (root only): the head or a tail of a
compound (large) folio, or a page of its own. Read FILE first (``cat FILE >/dev/null``):
pages not yet cached are filled by the mapping's own faults, with other folio sizes. Warm
reads of a FUSE file are copied out page by page when its page cache holds single pages
(PERFORMANCE.md, "Warm reads").
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1
COMPOUND_HEAD = 1 << 15
COMPOUND_TAIL = 1 << 16
USAGE = "usage: .venv/bin/python tools/folios.py FILE [MiB]"


def classify(path: str, limit: int) -> dict[str, int]:
    """Counts of ``head``, ``tail``, ``single`` and ``absent`` pages in the first ``limit``
    bytes of ``path``."""
    counts = {"head": 0, "tail": 0, "single": 0, "absent": 0}
    with open(path, "rb") as f:
        size = min(os.fstat(f.fileno()).st_size, limit) // PAGE * PAGE
        if size == 0:
            return counts
        # A private mapping has an address ctypes can read; reading never copies a page.
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
            for off in range(0, size, PAGE):
                m[off]  # fault the page in: pagemap knows only mapped pages
            anchor = ctypes.c_char.from_buffer(m)
            start = ctypes.addressof(anchor)
            del anchor
            with open("/proc/self/pagemap", "rb", buffering=0) as pm:
                pm.seek(start // PAGE * 8)
                entries = struct.unpack(f"<{size // PAGE}Q", pm.read(size // PAGE * 8))
    with open("/proc/kpageflags", "rb", buffering=0) as kf:
        for e in entries:
            if not e & PRESENT:
                counts["absent"] += 1
                continue
            if e & PFN_MASK == 0:
                # Without CAP_SYS_ADMIN pagemap shows every frame as 0.
                raise PermissionError("/proc/self/pagemap hides page frames (needs CAP_SYS_ADMIN)")
            kf.seek((e & PFN_MASK) * 8)
            (flags,) = struct.unpack("<Q", kf.read(8))
            if flags & COMPOUND_HEAD:
                counts["head"] += 1
            elif flags & COMPOUND_TAIL:
                counts["tail"] += 1
            else:
                counts["single"] += 1
    return counts


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(USAGE, file=sys.stderr)
        return 2
    limit = int(argv[2]) << 20 if len(argv) == 3 else 64 << 20
    try:
        c = classify(argv[1], limit)
    except OSError as exc:
        print(f"folios: {exc}", file=sys.stderr)
        return 1
    pages = sum(c.values())
    print(
        f"{argv[1]}: {pages} pages: {c['head'] + c['tail']} in {c['head']} large folios, "
        f"{c['single']} single, {c['absent']} not mapped"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
