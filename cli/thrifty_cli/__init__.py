"""The `thrifty` command line: one entry point that dispatches to each component."""
