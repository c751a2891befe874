"""The ``auxipc`` command line. Commands parse, call the library, print.

Exit codes and shared options: auxipc/cli/options.py. Long-running commands print one line containing ``ready`` once
they serve, and stop cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import click

from auxipc.cli import complete
from auxipc.cli.keys import REMOTE_OPTIONS, export_remote
from auxipc.cli.options import OWN_RUNTIME_DIR, RUNTIME_DIR, SCHEMA, SCHEMA_NAMES, Group, catalog_for, json_option

# The commands of the other modules, imported only when used: name -> (module:attr, short help).
LAZY = {
    "events": ("auxipc.cli.contract:events",
               "The event catalog, one event's contract, or the negotiated contract of DEVICE's binding."),
    "proto": ("auxipc.cli.contract:proto",
              "Artefacts generated from the event catalog: C header, Markdown reference, JSON schema."),
    "fault": ("auxipc.cli.fault:fault",
              "Inject faults: kill/stop processes, break handlers, drop or mangle messages."),
    "monitor": ("auxipc.cli.observe:monitor", "Print bus notifications as they happen, like udevadm monitor."),
    "trace": ("auxipc.cli.observe:trace",
              "Live trace of calls, events and notifications; render recorded traces."),
    "wait": ("auxipc.cli.observe:wait", "Block until a condition holds on the bus (bound, peer, broker, ...)."),
    "run": ("auxipc.cli.observe:run", "Run a scenario file: processes, steps, PASS/FAIL per step."),
    "up": ("auxipc.cli.up:up", "Start a broker and the processes of SCENARIO (default: Model A, ixd + idpf_eth), "
           "supervise them, and stop them all on SIGINT/SIGTERM."),
    "ps": ("auxipc.cli.up:ps", "The supervised processes: state, pid, restarts, last exit."),
    "stop": ("auxipc.cli.up:stop", "Stop process NAME (SIGTERM, grace, SIGKILL); it is not restarted."),
    "start": ("auxipc.cli.up:start", "Start process NAME again."),
    "restart": ("auxipc.cli.up:restart", "Stop and start process NAME."),
    "down": ("auxipc.cli.up:down", "Stop every supervised process (reverse start order) and the supervisor."),
    "keys": ("auxipc.cli.keys:keys", "CURVE keys for a bus across hosts: create, admit, revoke, ls."),
    "patterns": ("auxipc.cli.patterns:patterns", "One scenario as notifier chains, exported ops and the event "
                 "contract, measured on the bus: writes docs/patterns.md."),
    "soak": ("auxipc.cli.up:soak", "Chaos under load: kill, stop and restart drivers, the parent and the broker "
             "while events flow both ways; then check the invariants and print the figures."),
}


class Main(Group):
    lazy = LAZY


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@REMOTE_OPTIONS
@click.version_option(package_name="auxipc")
def main(verbose, connect, insecure, keys):
    """auxipc: a multi-process emulator of the Linux auxiliary bus with
    bidirectional event handlers.

    \b
    Quick start:
      auxipc demo                       # everything below, in one go
      auxipc broker &                   # the bus
      auxipc parent --model ixd &       # a PCI owner adding ixd.eth.0
      auxipc child --driver idpf_eth &  # an aux driver binding it
      auxipc ls
      auxipc send ixd.eth.0 FW_EVENT kind=HEALTH
    """
    export_remote(connect, insecure, keys)
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")


def _serve_until_signal(rt, ready_line) -> None:
    from auxipc.runtime.peer import BrokerLost
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: rt.stop())
    try:
        rt.open()
        click.echo(ready_line(rt), nl=True)
        sys.stdout.flush()
        rt.run()
    except BrokerLost:
        if not rt.stopping:
            raise        # asked to stop while the broker was away: a clean exit
    finally:
        rt.close()


@main.command()
@RUNTIME_DIR
@click.option("--hb-ivl", default=0.25, show_default=True, type=click.FloatRange(0.01, 60),
              help="Heartbeat interval (seconds) every peer is told to use.")
@click.option("--hb-liveness", default=3, show_default=True, type=click.IntRange(2, 100),
              help="Missed heartbeats before a peer is declared dead.")
@click.option("--hung-task-secs", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="A probe() or remove() still running after this long is reported, as the kernel's "
                   "hung-task detector would (hung_task_timeout_secs; 120 in the kernel).")
@click.option("--listen", multiple=True, metavar="tcp://ADDR:PORT",
              help="Also listen on TCP (PORT..PORT+3), CURVE-authenticated against the key dir's "
                   "authorized/ keys; repeatable.")
@click.option("--insecure", "listen_insecure", is_flag=True,
              help="Listen on plain TCP: no encryption, no authentication (ls says so).")
@click.option("--lane/--no-lane", default=None,
              help="Grant direct child->parent lanes to bound devices (docs/protocol.md, section 8); "
                   "default: on unless AUXIPC_LANE=0.")
@SCHEMA
def broker(runtime_dir, hb_ivl, hb_liveness, hung_task_secs, listen, listen_insecure, lane, catalog):
    """Run the bus broker (one per runtime dir).

    \b
    Across hosts (docs/multihost.md):
      auxipc keys create broker; auxipc keys admit host2.key
      auxipc broker --listen tcp://0.0.0.0:7700
    """
    from auxipc.broker.auth import Listeners
    from auxipc.broker.server import serve
    from auxipc.keys import key_dir
    from auxipc.runtime_dir import LANE_ENV
    insecure = listen_insecure or os.environ.get("AUXIPC_INSECURE", "") not in ("", "0")
    if lane is not None:
        os.environ[LANE_ENV] = "1" if lane else "0"     # what the bus reads (runtime_dir.lane_enabled)
    serve(runtime_dir, hb_ivl, hb_liveness, ready=lambda line: (click.echo(line), sys.stdout.flush()),
          catalog=catalog, hung_task_secs=hung_task_secs, listen=Listeners(tuple(listen), insecure, str(key_dir())))


@main.command()
@RUNTIME_DIR
@click.option("--model", required=True, shell_complete=complete.models,
              help="Parent model: ixd (Model A), idpf (Model B), mlx5_core, ice, or module:Class. "
                   "Their emulated hardware takes knobs from $AUXIPC_HW (docs/models.md).")
@click.option("--devices", default=1, show_default=True, type=click.IntRange(1, 4096),
              help="How many auxiliary devices of each kind the model adds (ids 0..N-1, or from "
                   "N*index for the index-th running instance of the model).")
@click.option("--pci", default="", metavar="ADDR",
              help="This instance's identity (a PCI address, e.g. 0000:3b:00.1), shown in 'auxipc ls'.")
@SCHEMA
def parent(runtime_dir, model, devices, pci, catalog):
    """Run a PCI-owner emulator process that adds auxiliary devices."""
    from auxipc.registry import MODELS, load
    from parent.runtime import ParentRuntime
    cls = load(model, MODELS, "parent model")
    try:
        instance = cls(devices=devices)
    except TypeError:
        instance = cls()
    rt = ParentRuntime(instance, pci, runtime_dir=runtime_dir, catalog=catalog)
    _serve_until_signal(rt, lambda rt: f"auxipc parent {rt.name} ready: "
                        + (", ".join(d.name for d in rt.devices.values()) or "no devices"))


@main.command()
@RUNTIME_DIR
@click.option("--driver", "drivers", multiple=True, required=True, shell_complete=complete.drivers,
              help="Auxiliary driver: idpf_eth, idpf_prime, mlx5e, irdma, mlx5_ib, mlx5_vdpa, "
                   "or module:Class. Repeatable.")
@SCHEMA
def child(runtime_dir, drivers, catalog):
    """Run an auxiliary-driver process."""
    from auxipc.registry import DRIVERS, load
    from child.runtime import ChildRuntime
    rt = ChildRuntime([load(d, DRIVERS, "driver")() for d in drivers], runtime_dir=runtime_dir, catalog=catalog)
    _serve_until_signal(rt, lambda rt: f"auxipc child {rt.name} ready: bound "
                        + (", ".join(d.name for d in rt.devices.values()) or "nothing yet"))


@main.command()
@RUNTIME_DIR
@json_option()
@click.option("--tree/--table", "tree", default=True, show_default=True,
              help="Parent -> device -> driver tree, or the flat tables.")
def ls(runtime_dir, as_json, tree):
    """Show devices, drivers and peers on the bus.

    \b
    Examples:
      auxipc ls                        # parent process -> devices -> bound driver, refs, events
      auxipc ls --table                # devices, drivers and peers as tables
      auxipc ls --json | jq '.devices[] | {name, bind, driver}'
    """
    from auxipc.observe.client import Client
    from auxipc.observe.render import render_ls, render_tree
    with Client(runtime_dir) as c:
        snap = c.query("ls")
    click.echo(json.dumps(snap, indent=2) if as_json else render_tree(snap) if tree else render_ls(snap))
    # What the broker dropped or refused, where it happened (counted since it started).
    drops = {k: v for k, v in sorted(snap.get("stats", {}).items()) if v and (
        k in ("malformed", "internal_errors", "send_dropped_hwm", "notify_dropped", "register_eexist")
        or (k.startswith("async_") and k != "async_passed"))}
    if drops and not as_json:
        click.echo("dropped/refused: " + ", ".join(f"{k}={v}" for k, v in drops.items()))


def _payload(spec, fields: tuple[str, ...], payload: str | None) -> dict:
    """The payload from --payload, @FILE.json arguments and key=value arguments, in that order."""
    from proto.errno import AuxError, Errno
    from proto.kvargs import assign
    obj: dict = {}
    sources = ([("--payload", payload)] if payload is not None else []) + [
        (f, None) for f in fields if f.startswith("@")]
    for where, text in sources:
        if text is None:
            try:
                with open(where[1:], encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                raise AuxError(Errno.ENOENT, f"{where}: {exc.strerror}") from None
        try:
            got = json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint=where) from None
        if not isinstance(got, dict):
            raise click.BadParameter("must be a JSON object", param_hint=where)
        obj.update(got)
    try:
        return assign(spec.payload, [f for f in fields if not f.startswith("@")], obj)
    except AuxError as exc:
        raise click.BadParameter(str(exc.message), param_hint="FIELDS") from None


@main.command()
@RUNTIME_DIR
@click.argument("device", shell_complete=complete.devices)
@click.argument("event", shell_complete=complete.events)
@click.argument("fields", nargs=-1, metavar="[KEY=VALUE|@FILE.json]...")
@click.option("--from", "side", type=click.Choice(["parent", "child"]),
              help="Which side's runtime sends the event (default: the side its direction allows).")
@click.option("--payload", default=None, help="The payload as a JSON object.")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.001, 3600),
              help="Deadline in seconds.")
@json_option("Print {errno, error, reply} as JSON.")
@SCHEMA_NAMES
@click.pass_context
def send(ctx, runtime_dir, device, event, fields, side, payload, timeout, as_json, catalog):
    """Send EVENT on DEVICE through the parent's or the child's runtime.

    The payload: KEY=VALUE arguments typed by the event's payload (ints, bools,
    enums by name, a MAC as aa:bb:cc:dd:ee:ff, lists and structs as JSON, a dotted
    key inside a nested struct), over @FILE.json and --payload. 'auxipc events EVENT'
    lists the fields. --from defaults to the sender the event's direction allows.

    \b
    Examples:
      auxipc send ixd.eth.0 FW_EVENT kind=HEALTH state=2
      auxipc send ixd.eth.0 SET_MAC addr=02:00:00:00:00:01 --json
      auxipc send ixd.eth.0 DCB_CONFIG @dcb.json pfc.pfc_en=0x10
    """
    from auxipc.observe.client import Client
    from proto.errno import AuxError
    catalog = catalog_for(ctx, catalog, event)
    try:
        spec = catalog.lookup(event)
    except AuxError:
        try:
            complete.event_arg(catalog, event)
        except AuxError as exc:
            raise click.BadParameter(exc.message, param_hint="EVENT") from None
        raise
    if side is None:
        senders = [s for s in ("parent", "child") if spec.direction.allows(s)]
        if len(senders) != 1:
            raise click.UsageError(f"{spec.name} goes {spec.direction.value}: say who sends it with --from")
        side = senders[0]
    obj = _payload(spec, fields, payload)
    with Client(runtime_dir) as c:
        out = c.send_event(device, spec.name, side, obj, timeout, catalog=catalog)
    if as_json:
        click.echo(json.dumps({k: out[k] for k in ("errno", "error", "message", "reply")}))
    elif out["errno"]:
        click.echo(f"{spec.name} on {device}: {out['error']} ({out['errno']}): {out['message']}", err=True)
    else:
        reply = f" reply {json.dumps(out['reply'])}" if out["reply"] else ""
        note = f" ({out['message']})" if out["message"] else ""
        click.echo(f"{spec.name} on {device}: ok{reply}{note}")
    sys.exit(1 if out["errno"] else 0)


@main.command()
@RUNTIME_DIR
@click.argument("device", shell_complete=complete.devices)
@click.argument("driver", shell_complete=complete.drivers)
def bind(runtime_dir, device, driver):
    """Bind DEVICE to DRIVER, like writing to /sys/bus/auxiliary/drivers/DRIVER/bind.

    Errors as the driver core's: unknown or non-matching device ENODEV, already
    bound EBUSY, deferred probe EAGAIN, or the probe's own error.
    """
    from auxipc.observe.client import Client
    with Client(runtime_dir, timeout=30.0) as c:
        c.query("bind", device=device, driver=driver)
    click.echo(f"{device}: bound to {driver}")


@main.command()
@RUNTIME_DIR
@click.argument("device", shell_complete=complete.devices)
@click.argument("driver", required=False, default="", shell_complete=complete.drivers)
def unbind(runtime_dir, device, driver):
    """Unbind DEVICE from its driver (its remove() runs), like sysfs unbind. With DRIVER,
    as /sys/bus/auxiliary/drivers/DRIVER/unbind: -ENODEV unless DRIVER is bound to DEVICE."""
    from auxipc.observe.client import Client
    with Client(runtime_dir, timeout=30.0) as c:
        c.query("unbind", device=device, driver=driver)
    click.echo(f"{device}: unbound")


@main.command()
@OWN_RUNTIME_DIR
@click.option("--record", type=click.Path(dir_okay=False, writable=True),
              help="Also write every trace record to FILE (JSON lines; draw it with "
                   "'auxipc trace render FILE --mermaid OUT.md').")
@click.argument("which", required=False, type=click.Choice(["model-a", "model-b"]))
def demo(runtime_dir, record, which):
    """Start a broker, the ixd parent and the idpf_eth child, play events both ways, stop.

    \b
    WHICH plays one of the proposal's diagrams instead, with emulated hardware behind the parent:
      model-a   ixd (the foundational NIC) + IDPF: FW event down; DCB change and reset request up
      model-b   idpf (PCI owner on an IPU) + IDPF': enable queues and post-config up; link change down
    """
    if which:
        from auxipc.testing.demo_models import run_model_demo
        sys.exit(run_model_demo(which, runtime_dir, record))
    from auxipc.testing.demo import run_demo
    sys.exit(run_demo(runtime_dir, record))


if __name__ == "__main__":
    main()
