"""Names the CLI completes and checks: events, devices, drivers, models.

Shell completion (click's ``shell_complete``; enable it with
``eval "$(_AUXIPC_COMPLETE=bash_source auxipc)"``) offers the events of the
catalog (with ``--schema`` if it was given before), the devices and drivers of
the running bus (nothing when none answers within a short time: completion
never blocks the shell), and the built-in models and drivers.

``event_arg`` checks an event argument before anything is installed or sent: an
unknown one is EINVAL naming the argument and the closest known name.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:       # the protocol is imported by what completes or checks, not by every command
    from click.shell_completion import CompletionItem

    from proto.events import Catalog, EventSpec

QUERY_TIMEOUT = 0.3     # seconds a completion may wait for the broker


def closest(name: str, known: list[str]) -> str | None:
    import difflib
    hits = difflib.get_close_matches(str(name).upper(), [k.upper() for k in known], n=1, cutoff=0.6)
    if not hits:
        return None
    return next(k for k in known if k.upper() == hits[0])


def closest_hint(name: str, known: list[str]) -> str:
    """``" (closest: RESET_WARN)"``, or nothing if no known name is close."""
    best = closest(name, known)
    return f" (closest: {best})" if best else ""


def event_arg(catalog: Catalog, name: str, what: str = "EVENT") -> EventSpec:
    """The event ``name`` (a name or code) of ``catalog``; an unknown one is a usage
    error (EINVAL, exit 2) naming ``what`` and the closest known name."""
    from proto.errno import AuxError, Errno
    try:
        return catalog.lookup(name)
    except AuxError:
        hint = closest_hint(name, [s.name for s in catalog])
        raise AuxError(Errno.EINVAL, f"{what} {name!r}: no such event in schema {catalog.version_str}{hint}; "
                       "usage: an event name or code from 'auxipc events'") from None


def _catalog(ctx) -> Catalog:
    from proto.events import CATALOG, Catalog
    value = ctx.params.get("catalog") if ctx is not None else None
    return value if isinstance(value, Catalog) else CATALOG


def _snapshot(ctx) -> dict:
    """The bus's ``ls``, or nothing (no broker, no answer in time)."""
    from auxipc.observe.client import Client
    runtime_dir = (ctx.params.get("runtime_dir") if ctx is not None else None) or os.environ.get("AUXIPC_RUNTIME_DIR")
    try:
        with Client(runtime_dir, timeout=QUERY_TIMEOUT) as c:
            return c.query("ls")
    except Exception:      # completion must never fail the shell: no bus, no names
        return {}


def _items(names, incomplete: str, help_of=None) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem
    low = incomplete.lower()
    return [CompletionItem(n, help=help_of(n) if help_of else None)
            for n in sorted(set(names)) if n.lower().startswith(low)]


def events(ctx, param, incomplete: str) -> list[CompletionItem]:
    cat = _catalog(ctx)
    docs = {s.name: f"{s.direction.value} {s.delivery.value}" for s in cat}
    return _items(docs, incomplete.upper() if incomplete.islower() else incomplete, docs.get)


def devices(ctx, param, incomplete: str) -> list[CompletionItem]:
    return _items([d["name"] for d in _snapshot(ctx).get("devices", [])], incomplete)


def event_or_device(ctx, param, incomplete: str) -> list[CompletionItem]:
    return events(ctx, param, incomplete) + devices(ctx, param, incomplete)


def drivers(ctx, param, incomplete: str) -> list[CompletionItem]:
    from auxipc.registry import DRIVERS
    on_bus = [d["name"] for d in _snapshot(ctx).get("drivers", [])] if param.name == "driver" else []
    return _items([*DRIVERS, *on_bus], incomplete)


def models(ctx, param, incomplete: str) -> list[CompletionItem]:
    from auxipc.registry import MODELS
    return _items(MODELS, incomplete)


def targets(ctx, param, incomplete: str) -> list[CompletionItem]:
    """Fault targets: the bus's peers by name, and the broker."""
    peers = [p["name"] for p in _snapshot(ctx).get("peers", [])]
    return _items(["broker", *peers], incomplete)
