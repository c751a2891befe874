"""The ``auxipc`` command line: thin commands that parse, call the library and print."""

from auxipc.cli.main import main

__all__ = ["main"]
