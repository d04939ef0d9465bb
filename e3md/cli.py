"""The ``e3md`` command line: ``e3md md``, ``e3md train``, ``e3md evaluate``.

Each subcommand lives in ``e3md/commands/<name>.py`` with two functions:
``add_arguments(parser)`` (cheap, no heavy imports) and ``run(args) -> int`` (imports jax /
jax_md lazily, since ``import jax_md`` compiles for ~5 s). ``e3md --help`` stays instant.
"""

import argparse
import importlib
import os
import sys

#: subcommand name -> (module, one-line help)
COMMANDS = {
    "md": ("e3md.commands.md", "run molecular dynamics with an e3md potential"),
    "train": ("e3md.commands.train", "fit a potential to reference data"),
    "evaluate": ("e3md.commands.evaluate", "report a potential's errors on reference data"),
}


def build_parser() -> argparse.ArgumentParser:
    from e3md import __version__

    parser = argparse.ArgumentParser(
        prog="e3md", description="E(3)-equivariant ML potentials for molecular dynamics."
    )
    parser.add_argument("--version", action="version", version=f"e3md {__version__}")
    parser.add_argument(
        "--compile-cache",
        metavar="DIR",
        default=os.environ.get("E3MD_COMPILE_CACHE"),
        help="directory of JAX's persistent compilation cache, so that a second run of the "
        "same system skips XLA compilation; 'none' turns it off (default: $E3MD_COMPILE_CACHE, "
        "else ~/.cache/e3md/jax; programs go in a subdirectory per kind of CPU; "
        "JAX_COMPILATION_CACHE_DIR, if set, wins)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cache = args.compile_cache or None  # an empty E3MD_COMPILE_CACHE means the default
    if cache is None or cache.lower() not in ("none", "off", "0"):
        from e3md.compiler import enable_compile_cache

        enable_compile_cache(cache)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
