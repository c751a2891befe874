"""Commands to see and script a bus: ``monitor``, ``trace``, ``wait``, ``run``.

Registered on the main group by ``auxipc/cli/main.py``. Long-running commands print a line
containing ``ready`` on stderr once subscribed (the broker echoed their hello: whatever is
published after it reaches them), write ``ready`` to ``--ready-fd`` then, are seen by
``auxipc wait watcher [NAME]``, and stop cleanly on SIGINT and SIGTERM; every command
honours ``--runtime-dir`` / ``$AUXIPC_RUNTIME_DIR``. ``monitor`` and ``trace`` show one
clock: seconds since the bus started (the broker's time zero), stamped by the process that
caused the record; ``--json`` adds the stamp itself (``mono_ns``, CLOCK_MONOTONIC).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

import click

from auxipc.cli.options import OWN_RUNTIME_DIR, RUNTIME_DIR, exit_code, fail, json_option
from auxipc.observe.conditions import CONDITIONS
from proto.errno import AuxError


@contextlib.contextmanager
def _stop_on_signal():
    """A flag set by SIGINT/SIGTERM while the block runs (handlers restored after)."""
    stop = {"set": False}
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, lambda *_: stop.__setitem__("set", True))
        except ValueError:   # not the main thread (tests calling in a thread): no handler
            pass
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _ready(what: str, root, ready_fd: int | None = None) -> None:
    click.echo(f"auxipc {what} ready: {root}", err=True)
    sys.stderr.flush()
    if ready_fd is not None:
        try:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        except OSError as exc:
            raise click.UsageError(f"--ready-fd {ready_fd}: {exc.strerror}") from None


WATCHER_OPTIONS = (
    click.option("--ready-fd", type=click.IntRange(0), metavar="N",
                 help="Once subscribed, write 'ready' to file descriptor N and close it "
                      "(a script reads it instead of waiting on the stderr line)."),
    click.option("--name", "watcher_name", metavar="NAME",
                 help="This watcher's name on the bus, for 'auxipc wait watcher NAME' "
                      "(default: the command's)."),
)


def _watcher_options(f):
    for opt in reversed(WATCHER_OPTIONS):
        f = opt(f)
    return f


def _stream(watch, stop, count: int | None, timeout: float | None, handle) -> int:
    """Read records until a signal, ``count`` handled records or ``timeout`` seconds; returns how many."""
    deadline = None if timeout is None else time.monotonic() + timeout
    n = 0
    while not stop["set"] and (count is None or n < count):
        wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
        if wait <= 0:
            break
        rec = watch.next(wait)
        if rec is not None and handle(rec):
            n += 1
            sys.stdout.flush()
    # Stopped: what is still in the reorder buffer (or in flight) was sent before the stop.
    for rec in watch.settle() if count is None or n < count else ():
        if (count is None or n < count) and handle(rec):
            n += 1
    while (count is None or n < count) and (rec := watch.next(0)) is not None:
        n += handle(rec)
    sys.stdout.flush()
    return n


COUNT = click.option("--count", type=click.IntRange(1), help="Exit after printing N records.")
TIMEOUT = click.option("--timeout", type=click.FloatRange(0, min_open=True),
                       help="Exit (status 0) after SECONDS.")


FILTERS = (("--device", "Only records of this device (glob, repeatable)."),
           ("--event", "Only this event or bus action (glob, repeatable)."),
           ("--peer", "Only records to or from this process (name or 'role name'; glob, repeatable)."))


def _filters(f):
    for opt, helptext in reversed(FILTERS):     # decorators apply bottom-up: keep the help in this order
        f = click.option(opt, opt[2:] + "s", multiple=True, metavar="GLOB", help=helptext)(f)
    return f


# ---- monitor -------------------------------------------------------------------------------

@click.command(short_help="Print bus notifications as they happen, like udevadm monitor.")
@RUNTIME_DIR
@click.option("-p", "--property", "properties", is_flag=True, help="Also print each event's KEY=value properties.")
@json_option("One JSON object per event (udev properties + the record).")
@click.option("--replay", is_flag=True, help="First print the notifications the broker kept (its last 20,000).")
@_filters
@COUNT
@TIMEOUT
@_watcher_options
def monitor(runtime_dir, properties, as_json, replay, devices, events, peers, count, timeout, ready_fd,
            watcher_name):
    """Print bus notifications as they happen, like `udevadm monitor`.

    ADD, BIND, UNBIND, REMOVE, RELEASE of devices (with MODALIAS=auxiliary:<match
    name>), drivers and processes coming and going, and whatever else the broker
    announces. A line containing 'ready' goes to stderr once subscribed; scripts
    wait for it with `auxipc wait watcher` or --ready-fd. KERNEL[seconds] is the
    time since the bus started, as in `auxipc trace`.

    \b
    Examples:
      auxipc monitor                          # KERNEL[1234.567890] bind  /bus/auxiliary/devices/ixd.eth.0 (auxiliary)
      auxipc monitor --property               # ... then ACTION=bind, DRIVER=idpf_eth, MODALIAS=auxiliary:ixd.eth, SEQNUM=5
      auxipc monitor --replay --count 3       # what already happened, then stop after 3 events
      auxipc monitor --json | jq .ACTION
      auxipc monitor & auxipc wait watcher monitor   # then nothing after this is missed
    """
    from auxipc.observe.client import Client
    from auxipc.observe.trace import Filter, Lifelines, dumps, format_udev, udev_event
    from auxipc.observe.watch import Watcher
    flt = Filter(devices, events, peers)
    lines = Lifelines()
    # The signal handlers first: a script may stop a watcher as soon as 'wait watcher' saw it
    with _stop_on_signal() as stop, Client(runtime_dir) as client, \
            Watcher(runtime_dir, topics=(b"bus",), name=watcher_name or "monitor") as watch:
        lines.seed(client.query("ls"))
        last = 0
        shown = 0

        def show(rec: dict, stamp: float) -> bool:
            lines.annotate(rec)
            if flt and not flt(rec):
                return False
            if as_json:
                click.echo(dumps({**udev_event(rec), "TIMESTAMP": round(stamp, 6), "record": rec}))
            else:
                click.echo(format_udev(rec, stamp, properties))
            return True

        if not as_json:
            click.echo("monitor will print the received events for:")
            click.echo(f"KERNEL - the auxipc bus notifications ({watch.ep.root})")
            click.echo("")
        if replay:
            kept = client.query("uevents", since=0)
            for e in kept["events"]:
                if count is not None and shown >= count:
                    break
                mono = int(e.get("ts", 0.0) * 1e9)     # the broker's CLOCK_MONOTONIC when it happened
                rec = {"kind": "bus", **e, "ts": watch.since_start(mono), "mono_ns": mono, "origin": "broker"}
                shown += show(rec, rec["ts"])
            last = kept["last"]
        _ready("monitor", watch.ep.root, ready_fd)

        def live(rec: dict) -> bool:
            if rec.get("kind") != "bus" or (rec.get("seq") or 0) <= last:
                return False
            return show(rec, rec["ts"])
        if count is None or shown < count:
            _stream(watch, stop, None if count is None else count - shown, timeout, live)


# ---- trace ---------------------------------------------------------------------------------

@click.group(invoke_without_command=True,
             short_help="Live trace of calls, events and notifications; render recorded traces.")
@RUNTIME_DIR
@_filters
@json_option("Print JSON lines instead of text.")
@click.option("--record", type=click.Path(dir_okay=False, writable=True),
              help="Also write every record (unfiltered) to FILE as JSON lines.")
@COUNT
@TIMEOUT
@_watcher_options
@click.pass_context
def trace(ctx, runtime_dir, devices, events, peers, as_json, record, count, timeout, ready_fd, watcher_name):
    """A live stream of everything on the bus: registrations, binds, each sync call
    (direction, errno, latency), each async event (direction, payload summary),
    faults and recoveries, in the order they happened (each record carries
    its sender's stamp; a short reorder window merges the broker's stream with
    the processes' events). Time is seconds since the bus started.

    \b
    Examples:
      auxipc trace                                  # everything, as it happens
      auxipc trace --device 'ixd.eth.*' --event SET_MAC --event 'RESET_*'
      auxipc trace --peer idpf_eth --json           # JSON lines for scripts
      auxipc trace --record run.jsonl &             # keep it while printing ...
      auxipc wait watcher trace                     # ... once it is subscribed, send
      auxipc trace render run.jsonl --mermaid run.md --html run.html
    """
    if ctx.invoked_subcommand is not None:
        return
    from auxipc.observe.client import Client
    from auxipc.observe.trace import Filter, Lifelines, dumps, format_trace
    from auxipc.observe.watch import Watcher
    flt = Filter(devices, events, peers)
    lines = Lifelines()
    out = open(record, "w", encoding="utf-8") if record else None
    try:
        with _stop_on_signal() as stop, Client(runtime_dir) as client, \
                Watcher(runtime_dir, name=watcher_name or "trace") as watch:
            lines.seed(client.query("ls"))
            _ready("trace", watch.ep.root, ready_fd)

            def show(rec: dict) -> bool:
                lines.annotate(rec)
                if out is not None:
                    out.write(dumps(rec) + "\n")
                    out.flush()
                if flt and not flt(rec):
                    return False
                click.echo(dumps(rec) if as_json else format_trace(rec))
                return True
            _stream(watch, stop, count, timeout, show)
    finally:
        if out is not None:
            out.close()


@trace.command("render")
@click.argument("recorded", type=click.Path(exists=True, dir_okay=False))
@click.option("--mermaid", "mermaid_out", type=click.Path(dir_okay=False, writable=True),
              help="Write a Mermaid sequence diagram: OUT.md (a ```mermaid block GitHub renders), "
                   "OUT.mmd, or - for stdout.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, writable=True),
              help="Write a self-contained HTML timeline.")
@click.option("--perfetto", "perfetto_out", type=click.Path(dir_okay=False, writable=True),
              help="Write Chrome trace-event JSON (open it in ui.perfetto.dev or chrome://tracing).")
@click.option("--title", help="Title of the diagram (default: the recorded file's name).")
@_filters
def render(recorded, mermaid_out, html_out, perfetto_out, title, devices, events, peers):
    """Draw RECORDED (JSON lines from `trace --record`, `demo --record` or `run --record`).

    Records are drawn in the order they happened (by their senders' stamps).
    Lifelines: parents, the broker, children. Sync calls go through the broker and
    back with their errno and latency; async events are open arrows; bus
    notifications are arrows to or from the broker; a parent's hardware changes
    are notes on its lifeline; faults are notes on the broker.
    --perfetto: one track per process, calls as slices with errno and latency,
    flow arrows caller -> broker -> callee, async events as instants, lock waits
    and lockdep reports as slices of their own.
    Without --mermaid, --html or --perfetto, the Mermaid text goes to stdout.

    \b
    Examples:
      auxipc demo --record demo.jsonl
      auxipc trace render demo.jsonl --mermaid demo.md       # view demo.md on GitHub
      auxipc trace render demo.jsonl --html demo.html --event 'SET_MAC' --event 'BIND'
      auxipc trace render demo.jsonl --perfetto demo.json     # drop demo.json on ui.perfetto.dev
    """
    from pathlib import Path

    from auxipc.observe.causal import resolve
    from auxipc.observe.diagram import to_html, to_markdown, to_mermaid
    from auxipc.observe.trace import Filter, load
    records = resolve(load(recorded))   # causal order, lifelines from every record; then filter
    flt = Filter(devices, events, peers)
    if flt:
        records = [r for r in records if flt(r)]
    title = title or Path(recorded).stem
    if mermaid_out in (None, "-") and not ((html_out or perfetto_out) and mermaid_out is None):
        click.echo(to_mermaid(records), nl=False)
    elif mermaid_out:
        text = to_markdown(records, title) if mermaid_out.endswith(".md") else to_mermaid(records)
        Path(mermaid_out).write_text(text, encoding="utf-8")
        click.echo(f"wrote {mermaid_out}: {len(records)} records", err=True)
    if html_out:
        Path(html_out).write_text(to_html(records, title), encoding="utf-8")
        click.echo(f"wrote {html_out}: {len(records)} records", err=True)
    if perfetto_out:
        from auxipc.observe.perfetto import dumps as trace_events
        Path(perfetto_out).write_text(trace_events(records), encoding="utf-8")
        click.echo(f"wrote {perfetto_out}: {len(records)} records", err=True)


# ---- wait ----------------------------------------------------------------------------------

def _conditions_help() -> str:
    arg = {True: " NAME", None: " [NAME]", False: ""}
    return "\n".join(f"  {name + arg[needs]:<16} {text}" for name, (needs, text) in CONDITIONS.items())


@click.command(short_help="Block until a condition holds on the bus (bound, peer, broker, ...).",
               help=f"""Block until CONDITION holds on the bus; exit 1 (saying what the bus
shows) if it does not within --timeout. While no broker answers, keep trying:
it may be starting.

\b
Conditions:
{_conditions_help()}

\b
Examples:
  auxipc broker & auxipc wait broker
  auxipc trace --record t.jsonl & auxipc wait watcher trace
  auxipc wait bound ixd.eth.0 --timeout 10
  auxipc wait peer idpf_eth && auxipc send ixd.eth.0 SET_MAC --from child --payload '{{"addr": "02:00:00:00:00:01"}}'
""")
@RUNTIME_DIR
@click.argument("condition", type=click.Choice(list(CONDITIONS)), metavar="CONDITION")
@click.argument("name", required=False)
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0, 3600),
              help="Seconds to wait.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def wait(runtime_dir, condition, name, timeout, quiet):
    from auxipc.observe import conditions
    try:
        conditions.validate(condition, name)
    except AuxError as exc:
        raise click.UsageError(exc.message) from None
    what, took = conditions.wait(condition, name, timeout, runtime_dir)
    if not quiet:
        click.echo(f"{what} ({took:.2f} s)")


# ---- run -----------------------------------------------------------------------------------

@click.command(short_help="Run a scenario file: processes, steps, PASS/FAIL per step.")
@click.argument("scenario_file", metavar="SCENARIO", type=click.Path(dir_okay=False))
@json_option("Print the report as JSON (progress still on stderr).")
@click.option("-x", "--exitfirst", is_flag=True, help="Stop at the first failing step.")
@click.option("--record", type=click.Path(dir_okay=False, writable=True),
              help="Write the whole trace to FILE (JSON lines).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
@OWN_RUNTIME_DIR
def run(scenario_file, as_json, exitfirst, record, quiet, runtime_dir):
    """Run a SCENARIO file (TOML): start a broker and its processes in a fresh
    runtime dir, play its steps, report PASS/FAIL per step (with the trace of a
    failing one), stop everything. Exit 0 when every step passes, 1 otherwise,
    2 when the file is invalid.

    \b
    Examples:
      auxipc run examples/model-a.toml
      auxipc run examples/crash.toml --json | jq '.steps[] | select(.ok | not)'
      auxipc run my.toml --record my.jsonl && auxipc trace render my.jsonl --mermaid my.md

    The format is in docs/testing.md.
    """
    from auxipc.observe.trace import format_trace
    from auxipc.testing.scenario import load
    from auxipc.testing.scenario_run import Runner
    try:
        sc = load(scenario_file)
    except AuxError as exc:
        fail(exc, exit_code(exc, invalid_input=True))
    progress = None if quiet else (lambda text: click.echo(f"  {text}", err=True))
    if not as_json:
        click.echo(f"scenario {sc.name}: {scenario_file} ({len(sc.processes)} processes, {len(sc.steps)} steps)")
    for w in sc.warnings:
        click.echo(f"warning: {scenario_file}: {w}", err=True)

    def on_step(res: dict) -> None:
        if as_json:
            return
        mark = click.style("PASS", fg="green") if res["ok"] else click.style("FAIL", fg="red", bold=True)
        detail = f" — {res['detail']}" if res["detail"] else ""
        click.echo(f"{mark}  {res['index']:>2}  {res['description']}{detail}  ({res['seconds']:.2f} s)")
        if not res["ok"]:
            recs = res.get("records") or []
            click.echo(f"      trace during step {res['index']} ({len(recs)} records):")
            for rec in recs:
                click.echo("        " + format_trace(rec))

    def interrupted(*_):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, interrupted)
    try:
        report = Runner(sc, runtime_dir=runtime_dir, progress=progress, fail_fast=exitfirst, record=record,
                        on_step=on_step).run()
    except KeyboardInterrupt:
        click.echo("auxipc run: interrupted; every process it started was stopped", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, old)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        if not report["setup"].get("ok"):
            click.echo(click.style("FAIL", fg="red", bold=True) + f"  setup: {report['setup'].get('error')}")
        total = len(sc.steps)
        verdict = click.style("ok", fg="green") if report["ok"] else click.style("FAILED", fg="red", bold=True)
        skipped = f", {report['skipped']} not run" if report["skipped"] else ""
        click.echo(f"{verdict}: {report['passed']}/{total} steps passed{skipped} in {report['seconds']:.1f} s")
    sys.exit(0 if report["ok"] else 1)


COMMANDS = (monitor, trace, wait, run)
