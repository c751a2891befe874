"""The contract's commands: ``auxipc events`` and ``auxipc proto {c-header,doc,dump}``.

Each renders the one declaration (proto/events.py plus the schema modules of
``--schema`` and the ``auxipc.schemas`` entry points); the generators themselves
are pure and live in proto/ (cheader.py, mddoc.py, Catalog.describe).
"""

from __future__ import annotations

import json

import click

from auxipc.cli.options import RUNTIME_DIR, SCHEMA, json_option
from auxipc.observe.render import table
from proto import cheader, mddoc
from proto.errno import AuxError, Errno
from proto.events import Catalog
from proto.names import version_str

OUTPUT = click.option("-o", "--output", type=click.File("w"), default="-", show_default=True,
                      help="Write to FILE instead of stdout.")


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"


@click.command()
@RUNTIME_DIR
@click.argument("device", required=False)
@json_option()
@SCHEMA
def events(runtime_dir, device, as_json, catalog: Catalog):
    """The event catalog, or the negotiated contract of DEVICE's binding.

    Without DEVICE: every event of the catalog (this command's --schema) with its
    direction, delivery, handler context, rtnl and version. With DEVICE: the same
    rows as the broker sees them for that device, plus whether the parent and the
    bound child handle each event and whether it can be delivered.

    \b
    Examples:
      auxipc events
      auxipc events ixd.eth.0
      auxipc events ixd.eth.0 --json | jq '.events[] | select(.deliverable | not) | .event'
    """
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
        raise AuxError(Errno.ENODEV, f"no device {device!r} on the bus (devices: {known})")
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
@SCHEMA
def c_header(output, catalog: Catalog):
    """A kernel-style C header: event enum, flags, one struct per payload, the unions.

    \b
    Example:
      auxipc proto c-header -o auxipc_events.h && gcc -std=gnu11 -Wall -Werror -fsyntax-only -x c auxipc_events.h
    """
    output.write(cheader.render(catalog))


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
