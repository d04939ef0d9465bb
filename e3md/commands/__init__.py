"""One module per ``e3md`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
