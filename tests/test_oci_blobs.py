"""Verified blob reading and streaming decompression (gzip, zstd, none, bomb guard)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from typing import BinaryIO

import pytest
import zstandard

from layerfs.oci import (
    BlobVerificationError,
    Compression,
    DecompressionBombError,
    DecompressionLimits,
    InvalidImageError,
    UnsupportedImageError,
    VerifiedReader,
    VerifiedStream,
    compute_digest,
    detect_compression,
    open_decompressed,
    parse_digest,
)
from layerfs.oci.compression.zstd import FrameTracker

PAYLOAD = os.urandom(200_000) + b"\0" * 300_000


class ExplodingStream:
    """A stream that must never be read."""

    def read(self, size: int = -1, /) -> bytes:
        raise AssertionError("read before validation")

    def close(self) -> None:
        pass


class CountingBytes(io.BytesIO):
    """BytesIO that records how many bytes were handed out."""

    handed_out = 0

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        self.handed_out += len(chunk)
        return chunk


# --- VerifiedReader --------------------------------------------------------------


def test_verified_reader_accepts_good_blob() -> None:
    digest = compute_digest(PAYLOAD)
    with VerifiedReader(io.BytesIO(PAYLOAD), digest, len(PAYLOAD)) as r:
        assert r.read(10) == PAYLOAD[:10]
        assert r.read() == PAYLOAD[10:]
        assert r.verified and r.bytes_read == len(PAYLOAD)


def test_verified_reader_too_short() -> None:
    digest = compute_digest(PAYLOAD)
    r = VerifiedReader(io.BytesIO(PAYLOAD[:-1]), digest, len(PAYLOAD))
    with pytest.raises(
        BlobVerificationError, match=f"blob {digest}: size mismatch: .*got {len(PAYLOAD) - 1}"
    ):
        r.read()


def test_verified_reader_too_long_reads_at_most_one_extra_byte() -> None:
    digest = compute_digest(PAYLOAD[:100])
    raw = CountingBytes(PAYLOAD)
    r = VerifiedReader(raw, digest, 100)
    with pytest.raises(
        BlobVerificationError, match=f"blob {digest}: size mismatch: expected 100 bytes, got more"
    ):
        r.read()
    assert raw.handed_out == 101


def test_verified_reader_digest_mismatch() -> None:
    digest = compute_digest(b"other" * 10)
    r = VerifiedReader(io.BytesIO(b"x" * 50), digest, 50)
    with pytest.raises(BlobVerificationError, match=f"blob {digest}: digest mismatch"):
        r.verify()


def test_verified_reader_failure_is_sticky() -> None:
    digest = compute_digest(b"good")
    r = VerifiedReader(io.BytesIO(b"bad!"), digest, 4)
    with pytest.raises(BlobVerificationError, match="digest mismatch"):
        r.read()
    with pytest.raises(BlobVerificationError, match="digest mismatch"):
        r.read(1)
    with pytest.raises(BlobVerificationError, match="digest mismatch"):
        r.verify()


def _takes_binary_io(f: BinaryIO) -> bytes:
    return f.read()


def test_verified_stream_is_buffered_binary_io() -> None:
    digest = compute_digest(PAYLOAD)
    with VerifiedStream(VerifiedReader(io.BytesIO(PAYLOAD), digest, len(PAYLOAD))) as s:
        assert s.read(1) == PAYLOAD[:1]
        assert not s.verified
        s.verify()
        assert s.verified and s.digest == digest
    with VerifiedStream(VerifiedReader(io.BytesIO(PAYLOAD), digest, len(PAYLOAD))) as s:
        assert _takes_binary_io(s) == PAYLOAD and s.verified


def test_verified_reader_verify_drains() -> None:
    digest = compute_digest(PAYLOAD)
    r = VerifiedReader(io.BytesIO(PAYLOAD), digest, len(PAYLOAD))
    r.read(5)
    assert not r.verified
    r.verify()
    assert r.verified and r.read(10) == b""


@pytest.mark.parametrize("size", [-1, 1 << 50, True])
def test_verified_reader_rejects_size_before_io(size: int) -> None:
    with pytest.raises(InvalidImageError, match="refusing size"):
        VerifiedReader(ExplodingStream(), compute_digest(b""), size)


def test_verified_reader_rejects_unknown_algorithm_before_io() -> None:
    with pytest.raises(UnsupportedImageError, match="cannot verify foo:bar"):
        VerifiedReader(ExplodingStream(), parse_digest("foo:bar"), 3)


def test_verified_reader_unknown_size_is_bounded() -> None:
    digest = compute_digest(b"x" * 10)
    assert VerifiedReader(io.BytesIO(b"x" * 10), digest, None).read() == b"x" * 10
    r = VerifiedReader(io.BytesIO(b"x" * 11), digest, None, max_size=10)
    with pytest.raises(BlobVerificationError, match="larger than the limit of 10 bytes"):
        r.read()


# --- decompression -------------------------------------------------------------


def _zstd(data: bytes, **kwargs: bool) -> bytes:
    return zstandard.ZstdCompressor(**kwargs).compress(data)  # type: ignore[arg-type]


def _zstd_streamed(data: bytes) -> bytes:
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as w:
        for i in range(0, len(data), 7000):
            w.write(data[i : i + 7000])
    return out.getvalue()


def _skippable(payload: bytes) -> bytes:
    return (0x184D2A5A).to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload


def _decompress(data: bytes, compression: Compression, **limits: int) -> bytes:
    with open_decompressed(
        io.BytesIO(data), compression, limits=DecompressionLimits(**limits), name="blob x"
    ) as r:
        return r.read()


@pytest.mark.parametrize(
    ("compressed", "compression"),
    [
        (gzip.compress(PAYLOAD), Compression.GZIP),
        (gzip.compress(PAYLOAD[:1000]) + gzip.compress(PAYLOAD[1000:]), Compression.GZIP),
        (gzip.compress(PAYLOAD) + b"\0" * 1000, Compression.GZIP),
        (_zstd(PAYLOAD), Compression.ZSTD),
        (_zstd(PAYLOAD, write_checksum=True, write_content_size=False), Compression.ZSTD),
        (_zstd_streamed(PAYLOAD), Compression.ZSTD),
        (
            _skippable(b"s") + _zstd(PAYLOAD[:9]) + _zstd(PAYLOAD[9:]) + _skippable(b""),
            Compression.ZSTD,
        ),
        (PAYLOAD, Compression.NONE),
    ],
    ids=[
        "gzip",
        "gzip-multi",
        "gzip-padded",
        "zstd",
        "zstd-checksum",
        "zstd-stream",
        "zstd-multi",
        "none",
    ],
)
def test_decompress_roundtrip(compressed: bytes, compression: Compression) -> None:
    assert _decompress(compressed, compression) == PAYLOAD
    # Small reads exercise the bounded-output paths.
    with open_decompressed(io.BytesIO(compressed), compression) as r:
        parts = []
        while chunk := r.read(333):
            parts.append(chunk)
    assert b"".join(parts) == PAYLOAD


@pytest.mark.parametrize(
    ("compressed", "compression", "message"),
    [
        (b"", Compression.GZIP, "blob x: empty gzip stream"),
        (gzip.compress(PAYLOAD)[:-9], Compression.GZIP, "blob x: truncated gzip stream"),
        (
            gzip.compress(PAYLOAD) + b"junk",
            Compression.GZIP,
            "blob x: corrupt gzip data in member 2",
        ),
        (b"\x1f\x8b" + b"\0" * 30, Compression.GZIP, "blob x: corrupt gzip data"),
        (gzip.compress(PAYLOAD)[:-1] + b"\x99", Compression.GZIP, "blob x: corrupt gzip data"),
        (b"", Compression.ZSTD, "blob x: empty zstd stream"),
        (_zstd(PAYLOAD)[:-7], Compression.ZSTD, "blob x: truncated zstd stream"),
        (_zstd(PAYLOAD)[:30], Compression.ZSTD, "blob x: truncated zstd stream"),
        (_zstd_streamed(PAYLOAD)[:-1], Compression.ZSTD, "blob x: truncated zstd stream"),
        (_zstd(PAYLOAD) + b"junk", Compression.ZSTD, "blob x: corrupt zstd data"),
    ],
)
def test_decompress_errors(compressed: bytes, compression: Compression, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        _decompress(compressed, compression)


def test_bomb_guard_ratio() -> None:
    zeros = b"\0" * (8 << 20)
    for compression, blob in [
        (Compression.GZIP, gzip.compress(zeros)),
        (Compression.ZSTD, _zstd(zeros)),
    ]:
        with pytest.raises(DecompressionBombError, match=r"blob x: expands more than 100:1"):
            _decompress(blob, compression, max_ratio=100, slack=1 << 16)
        assert _decompress(blob, compression) == zeros  # the defaults let it through


def test_bomb_guard_max_output() -> None:
    with pytest.raises(DecompressionBombError, match="exceeds the limit of 1000 bytes"):
        _decompress(gzip.compress(PAYLOAD), Compression.GZIP, max_output=1000)
    with pytest.raises(ValueError, match="max_ratio"):
        DecompressionLimits(max_ratio=0)


def test_decompressed_stream_feeds_tarfile(tmp_path: os.PathLike[str]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("a/b.txt")
        info.size = len(PAYLOAD)
        tar.addfile(info, io.BytesIO(PAYLOAD))
    for compression, blob in [
        (Compression.GZIP, gzip.compress(buf.getvalue())),
        (Compression.ZSTD, _zstd_streamed(buf.getvalue())),
    ]:
        assert detect_compression(blob[:4]) is compression
        with (
            open_decompressed(io.BytesIO(blob), compression) as stream,
            tarfile.open(fileobj=stream, mode="r|") as tar,
        ):
            member = tar.next()
            assert member is not None and member.name == "a/b.txt"
            f = tar.extractfile(member)
            assert f is not None and f.read() == PAYLOAD
    assert detect_compression(buf.getvalue()[:4]) is Compression.NONE


def test_frame_tracker_boundaries() -> None:
    blob = _skippable(b"abc") + _zstd(PAYLOAD, write_checksum=True)
    tracker = FrameTracker()
    assert tracker.at_boundary
    for i in range(len(blob) - 1):
        tracker.feed(blob[i : i + 1])
        assert tracker.at_boundary == (i == len(_skippable(b"abc")) - 1)
    tracker.feed(blob[-1:])
    assert tracker.at_boundary
