"""Component subcommands, one module each."""
