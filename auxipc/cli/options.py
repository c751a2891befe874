"""What every ``auxipc`` command shares: its options and how an error becomes an exit.

Options: ``RUNTIME_DIR`` (the bus a command talks to), ``OWN_RUNTIME_DIR`` (for
commands that start a bus of their own: demo, run), ``SCHEMA`` (user-defined
events), ``json_option`` (machine-readable output).

Exit codes, written once here: 0 success; 1 the operation or event failed (the
errno is printed in one line); 2 usage error (click's, or an EINVAL that says
"usage", or an invalid input file); an unexpected exception is one line
"internal error" (the traceback with -vv), exit 1.
"""

from __future__ import annotations

import logging
import sys

import click

from auxipc.schemas import ENTRY_POINT_GROUP, load_catalog
from proto.errno import AuxError, Errno
from proto.events import Catalog

RUNTIME_DIR = click.option("--runtime-dir", envvar="AUXIPC_RUNTIME_DIR", type=click.Path(file_okay=False),
                           help="Bus runtime dir (default: $AUXIPC_RUNTIME_DIR, $XDG_RUNTIME_DIR/auxipc, "
                                "/tmp/auxipc-$UID).")
OWN_RUNTIME_DIR = click.option("--runtime-dir", type=click.Path(file_okay=False),
                               help="Run in this (new or empty) dir instead of a fresh temporary one.")


def _to_catalog(ctx, param, value) -> Catalog:
    try:
        return load_catalog(value)
    except AuxError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


SCHEMA = click.option(
    "--schema", "catalog", multiple=True, envvar="AUXIPC_SCHEMA", metavar="MODULE", callback=_to_catalog,
    help="Load user-defined events from MODULE (EVENTS, optional SCHEMA_VERSION); repeatable. "
         f"Modules of the '{ENTRY_POINT_GROUP}' entry-point group are always loaded. Env: AUXIPC_SCHEMA.")


def json_option(help: str = "Machine-readable output."):
    return click.option("--json", "as_json", is_flag=True, help=help)


def exit_code(exc: AuxError, invalid_input: bool = False) -> int:
    """2 for a usage error (or, with ``invalid_input``, any EINVAL: a bad file the user gave), else 1."""
    if exc.errno == Errno.EINVAL and (invalid_input or "usage" in exc.message):
        return 2
    return 1


def fail(exc: AuxError, code: int | None = None):
    """Print ``auxipc: <errno>: <message>`` on stderr and exit (``code``, or ``exit_code(exc)``)."""
    click.echo(f"auxipc: {exc}", err=True)
    sys.exit(exit_code(exc) if code is None else code)


class Group(click.Group):
    """Turns every AuxError escaping a command into one line and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AuxError as exc:
            fail(exc)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit,
                KeyboardInterrupt):
            raise
        except Exception as exc:  # a bug: one line, and the traceback with -v
            logging.getLogger("auxipc").debug("internal error", exc_info=True)
            click.echo(f"auxipc: internal error: {type(exc).__name__}: {exc} "
                       "(run with -vv for the traceback, and please report it)", err=True)
            sys.exit(1)
