"""Image config to runtime-spec ``config.json`` (pure conversion, no I/O)."""
