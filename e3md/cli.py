"""The ``e3md`` command line: ``e3md md``, ``e3md train``, ``e3md evaluate``.

Heavy imports (jax_md, which compiles at import) happen inside the subcommands, so that
``e3md --help`` is instant.
"""

import argparse
import sys


def _not_yet(name: str):
    def run(args) -> int:
        print(f"e3md {name}: not yet available in this version", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    from e3md import __version__

    parser = argparse.ArgumentParser(prog="e3md", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"e3md {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("md", "train", "evaluate"):
        p = sub.add_parser(name)
        p.set_defaults(func=_not_yet(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
