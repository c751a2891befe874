"""The contract's commands: ``auxipc events`` and ``auxipc proto {c-header,doc,dump,diff}``.

Each renders the one declaration (proto/events.py plus the schema modules of
``--schema`` and the ``auxipc.schemas`` entry points); the generators themselves
are pure and live in proto/ (cheader.py, mddoc.py, abidiff.py, Catalog.describe).
"""

from __future__ import annotations

import json

import click

from auxipc.cli import complete
from auxipc.cli.options import RUNTIME_DIR, SCHEMA, fail, json_option
from auxipc.observe.render import table
from proto import abidiff, cheader, eventdoc, mddoc
from proto.errno import AuxError, Errno
from proto.events import Catalog
from proto.names import version_str

OUTPUT = click.option("-o", "--output", type=click.File("w"), default="-", show_default=True,
                      help="Write to FILE instead of stdout.")


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"


def _event_named(catalog: Catalog, name: str):
    """The spec ``name`` names in the catalog (by name or code), else None."""
    try:
        return catalog.lookup(name)
    except AuxError:
        return None


@click.command()
@RUNTIME_DIR
@click.argument("device", metavar="[EVENT|DEVICE]", required=False, shell_complete=complete.event_or_device)
@json_option()
@SCHEMA
def events(runtime_dir, device, as_json, catalog: Catalog):
    """The event catalog, one event's contract, or the negotiated contract of DEVICE's binding.

    Without an argument: every event of the catalog (this command's --schema) with its
    direction, delivery, handler context, rtnl and version. With EVENT (a name or
    code of the catalog): that event in full, its payload and reply structs field
    by field with C types, ranges and defaults; no bus needed. With DEVICE: the
    rows as the broker sees them for that device, plus whether the parent and the
    bound child handle each event and whether it can be delivered.

    \b
    Examples:
      auxipc events
      auxipc events SET_MAC
      auxipc events ixd.eth.0
      auxipc events ixd.eth.0 --json | jq '.events[] | select(.deliverable | not) | .event'
    """
    spec = _event_named(catalog, device) if device is not None else None
    if spec is not None:
        if as_json:
            click.echo(json.dumps(eventdoc.describe(spec), indent=2))
        else:
            click.echo(eventdoc.render(spec), nl=False)
        return
    if device is not None and "." not in device:     # device names are modname.name.id: a misspelt event
        complete.event_arg(catalog, device)
    if device is None:
        rows = [spec.describe() for spec in catalog]
        if as_json:
            click.echo(json.dumps({"schema": catalog.version_str, "events": rows}, indent=2))
            return
        click.echo(f"schema {catalog.version_str}: {len(rows)} events")
        click.echo(table([[str(r["code"]), r["name"], r["direction"], r["delivery"], r["context"],
                           _yes(r["rtnl"]), version_str(r["since"]), r["payload"], r["reply"] or ""]
                          for r in rows],
                         ["CODE", "EVENT", "DIRECTION", "DELIVERY", "CONTEXT", "RTNL", "SINCE", "PAYLOAD", "REPLY"]))
        return
    from auxipc.observe.client import Client
    with Client(runtime_dir) as c:
        snap = c.query("ls")
    dev = next((d for d in snap["devices"] if d["name"] == device), None)
    if dev is None:
        known = ", ".join(d["name"] for d in snap["devices"]) or "none"
        raise AuxError(Errno.ENODEV, f"no device {device!r} on the bus (devices: {known}) and no such event "
                       f"in schema {catalog.version_str}{complete.closest_hint(device, [s.name for s in catalog])}")
    schema = dev.get("schema") or {}
    if as_json:
        click.echo(json.dumps({k: dev.get(k) for k in ("name", "driver", "parent", "schema", "last_error", "events")},
                              indent=2))
        return
    if dev["driver"]:
        head = (f"{dev['name']}: {dev['parent']} (schema {schema.get('parent')}) <-> driver {dev['driver']} "
                f"(schema {schema.get('child')}): contract {schema.get('negotiated')}")
    else:
        head = f"{dev['name']}: {dev['parent']} (schema {schema.get('parent')}), no driver bound"
    click.echo(head)
    if dev.get("last_error"):
        click.echo(f"last error: {dev['last_error']}")
    click.echo(table([[str(e.get("code", "")), e["event"], e["direction"], e["delivery"], e.get("context", ""),
                       _yes(e.get("rtnl")), e.get("since", ""), _yes(e["parent"]), _yes(e["child"]),
                       _yes(e["deliverable"])] for e in dev["events"]],
                     ["CODE", "EVENT", "DIRECTION", "DELIVERY", "CONTEXT", "RTNL", "SINCE", "PARENT", "CHILD",
                      "DELIVERABLE"]))


@click.group()
def proto():
    """Artefacts generated from the event catalog: C header, Markdown reference, JSON schema."""


@proto.command("c-header")
@OUTPUT
@click.option("--ops", is_flag=True,
              help="Also the handler prototypes: an ops struct per receiving side and the send entry points.")
@SCHEMA
def c_header(output, ops, catalog: Catalog):
    """A kernel-style C header: event enum, flags, one struct per payload, the unions.

    \b
    Example:
      auxipc proto c-header -o auxipc_events.h && gcc -std=gnu11 -Wall -Werror -fsyntax-only -x c auxipc_events.h
      auxipc proto c-header --ops | grep -A3 'struct auxipc_parent_ops'
    """
    output.write(cheader.render(catalog, ops=ops))


@proto.command()
@OUTPUT
@SCHEMA
def doc(output, catalog: Catalog):
    """The Markdown reference of the catalog (docs/events.md is this output)."""
    output.write(mddoc.render(catalog))


@proto.command()
@OUTPUT
@json_option("The machine-readable schema (the default is a summary).")
@SCHEMA
def dump(output, as_json, catalog: Catalog):
    """The schema: events, structs with their fields and rules, enums."""
    d = catalog.describe()
    if as_json:
        output.write(json.dumps(d, indent=2) + "\n")
        return
    lines = [f"schema {d['schema']}"]
    for ev in d["events"]:
        reply = f" -> {ev['reply']}" if ev["reply"] else ""
        lines.append(f"  {ev['code']:>6} {ev['name']:<22} {ev['direction']:<14} {ev['delivery']:<5} "
                     f"{ev['payload']}{reply}")
    for name, s in d["structs"].items():
        lines.append(f"struct {name}: " + ", ".join(f["name"] for f in s["fields"]))
    output.write("\n".join(lines) + "\n")


def _load_dump(path: str, which: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return abidiff.check_dump(json.load(f), f"{which} {path}")
    except OSError as exc:
        raise AuxError(Errno.ENOENT, f"{which} {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise AuxError(Errno.EINVAL, f"{which} {path}: not JSON: {exc}") from None


@proto.command()
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
@json_option("{breaking, compatible, changes: [{rule, where, message, breaking}]}.")
def diff(old, new, as_json):
    """The ABI guard: classify every change from OLD to NEW as compatible or breaking.

    OLD and NEW are 'auxipc proto dump --json' outputs. Breaking: an event removed,
    renumbered or its code reused; its direction, delivery, context or rtnl changed;
    a field removed, retyped, reordered or inserted; a new field without a default;
    a narrowed range, length or enum; a changed default or since. Compatible: added
    events, appended optional fields, widened ranges. Exit 1 on a breaking change,
    2 on unreadable input, else 0.

    \b
    Example:
      git show main:schema.json > old.json; auxipc proto dump --json -o new.json
      auxipc proto diff old.json new.json
    """
    try:
        a, b = _load_dump(old, "OLD"), _load_dump(new, "NEW")
    except AuxError as exc:
        fail(exc, 2)
    changes = abidiff.diff(a, b)
    if as_json:
        click.echo(json.dumps({"old": a["schema"], "new": b["schema"], **abidiff.summary(changes)}, indent=2))
    else:
        click.echo(abidiff.render(changes, a["schema"], b["schema"]), nl=False)
    raise SystemExit(1 if any(c.breaking for c in changes) else 0)
