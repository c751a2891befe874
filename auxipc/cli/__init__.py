"""The ``auxipc`` command line: thin commands that parse, call the library and print.

The click group is ``auxipc.cli.main.main``; ``run`` is the console script.
"""

from __future__ import annotations

import sys


def run(*args, **kwargs):
    """The console script: first make sure ``proto``/``parent``/``child`` are auxipc's own
    (a user's module of that name on sys.path would break every command far from the cause)."""
    from auxipc.shadowing import shadowed
    problem = shadowed()
    if problem:
        print(f"auxipc: {problem}", file=sys.stderr)
        sys.exit(1)
    from auxipc.cli.main import main as cli
    return cli(*args, **kwargs)


__all__ = ["run"]
