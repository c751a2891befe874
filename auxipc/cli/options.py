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

import importlib
import logging
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from proto.errno import AuxError
    from proto.events import Catalog

# What a command imports is what it costs (a command is a fresh process): the protocol,
# ZeroMQ and the schema loader are imported by the commands that use them, not here.
ENTRY_POINT_GROUP = "auxipc.schemas"     # auxipc.schemas.ENTRY_POINT_GROUP, without importing it

RUNTIME_DIR = click.option("--runtime-dir", envvar="AUXIPC_RUNTIME_DIR", type=click.Path(file_okay=False),
                           help="Bus runtime dir (default: $AUXIPC_RUNTIME_DIR, $XDG_RUNTIME_DIR/auxipc, "
                                "/tmp/auxipc-$UID).")
OWN_RUNTIME_DIR = click.option("--runtime-dir", type=click.Path(file_okay=False),
                               help="Run in this (new or empty) dir instead of a fresh temporary one.")


def _to_catalog(ctx, param, value) -> Catalog:
    from auxipc.schemas import load_catalog
    from proto.errno import AuxError
    try:
        return load_catalog(value)
    except AuxError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _schema_option(callback):
    return click.option(
        "--schema", "catalog", multiple=True, envvar="AUXIPC_SCHEMA", metavar="MODULE", callback=callback,
        help="Load user-defined events from MODULE (EVENTS, optional SCHEMA_VERSION); repeatable. "
             f"Modules of the '{ENTRY_POINT_GROUP}' entry-point group are always loaded. Env: AUXIPC_SCHEMA.")


SCHEMA = _schema_option(_to_catalog)
# The same option for a command that needs one event's spec: the module names, for catalog_for().
SCHEMA_NAMES = _schema_option(lambda ctx, param, value: tuple(value))


def catalog_for(ctx, names: tuple[str, ...], event: str) -> Catalog:
    """The catalog to look ``event`` up in. Schema modules only add events (a second
    spec of a built-in name or code is refused), so without --schema a built-in event
    needs only the built-in catalog: the installed entry points (importlib.metadata,
    ~30 ms of a command's start) are read for any other event."""
    from proto.errno import AuxError
    from proto.events import CATALOG
    if not names:
        try:
            CATALOG.lookup(event)
            return CATALOG
        except AuxError:
            pass
    param = next(p for p in ctx.command.params if p.name == "catalog")
    return _to_catalog(ctx, param, names)


def json_option(help: str = "Machine-readable output."):
    return click.option("--json", "as_json", is_flag=True, help=help)


def exit_code(exc: AuxError, invalid_input: bool = False) -> int:
    """2 for a usage error (or, with ``invalid_input``, any EINVAL: a bad file the user gave), else 1."""
    from proto.errno import Errno
    if exc.errno == Errno.EINVAL and (invalid_input or "usage" in exc.message):
        return 2
    return 1


def fail(exc: AuxError, code: int | None = None):
    """Print ``auxipc: <errno>: <message>`` on stderr and exit (``code``, or ``exit_code(exc)``)."""
    click.echo(f"auxipc: {exc}", err=True)
    sys.exit(exit_code(exc) if code is None else code)


def _is_aux_error(exc: BaseException) -> bool:
    errno = sys.modules.get("proto.errno")     # not imported: nothing could have raised one
    return errno is not None and isinstance(exc, errno.AuxError)


class Group(click.Group):
    """Turns every AuxError escaping a command into one line and its exit code.

    ``lazy`` maps a command name to ``(module:attr, short help)``: the module is imported
    when the command is run or its own help is asked for, not for every command; the short
    help is what ``auxipc --help`` lists (a test checks it against the command's own)."""

    lazy: dict[str, tuple[str, str]] = {}

    def list_commands(self, ctx):
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx, name):
        if name not in self.commands and name in self.lazy:
            module, _, attr = self.lazy[name][0].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return self.commands.get(name)

    def format_commands(self, ctx, formatter):
        names = [n for n in self.list_commands(ctx) if n not in self.commands or not self.commands[n].hidden]
        if not names:
            return
        limit = formatter.width - 6 - max(map(len, names))
        rows = [(n, self._short_help(n, limit)) for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def _short_help(self, name: str, limit: int) -> str:
        cmd = self.commands.get(name)
        if cmd is not None:
            return cmd.get_short_help_str(limit)
        return click.Command(name, help=self.lazy[name][1]).get_short_help_str(limit)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit,
                KeyboardInterrupt):
            raise
        except Exception as exc:  # a bug: one line, and the traceback with -v
            if _is_aux_error(exc):
                fail(exc)     # type: ignore[arg-type]  # an AuxError: _is_aux_error checked it
            logging.getLogger("auxipc").debug("internal error", exc_info=True)
            click.echo(f"auxipc: internal error: {type(exc).__name__}: {exc} "
                       "(run with -vv for the traceback, and please report it)", err=True)
            sys.exit(1)
