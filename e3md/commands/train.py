"""e3md train (not yet available in this version)."""

import sys


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    print("e3md train: not yet available in this version", file=sys.stderr)
    return 2
