"""The `iot` command line's subcommands that are not the runner's own start/stop/status (stack/cli.py)."""
