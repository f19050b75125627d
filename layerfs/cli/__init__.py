"""Command-line wiring for ``layerfs`` and ``layerctl``: argument parsing, no logic of its own."""
