"""``auxipc demo``: a broker, the ixd parent and the idpf_eth child, events both ways.

Each step says what it does; the bus activity it causes is printed as it
happens (bus notifications, sync calls with their result and latency, async
events with their payload), read from the broker's publisher like
``auxipc trace`` would.
"""

from __future__ import annotations

import shutil
import tempfile

import click

from auxipc.observe.client import Client
from auxipc.observe.trace import dumps
from auxipc.observe.watch import Watcher, format_record
from auxipc.process.launch import Proc
from proto.errno import AuxError


def run_demo(runtime_dir: str | None = None, record: str | None = None) -> int:
    """``record``: also write every record seen to this file, as JSON lines
    (``auxipc trace render FILE --mermaid OUT.md`` draws it)."""
    own_dir = runtime_dir is None
    root = runtime_dir or tempfile.mkdtemp(prefix="auxipc-demo-", dir="/tmp")
    logs = tempfile.mkdtemp(prefix="auxipc-demo-logs-")
    procs: list[Proc] = []
    counts = {"steps": 0, "bus": 0, "call": 0, "event": 0}
    rec_file = open(record, "w", encoding="utf-8") if record else None
    show = lambda rec: (counts.__setitem__(rec["kind"], counts.get(rec["kind"], 0) + 1),
                        click.echo("        " + format_record(rec)),
                        rec_file and (rec_file.write(dumps(rec) + "\n"), rec_file.flush()))

    def step(text: str) -> None:
        counts["steps"] += 1
        click.secho(f"[{counts['steps']}] {text}", bold=True)

    def start(name: str, *args: str) -> Proc:
        proc = Proc(name, [*args, "--runtime-dir", root], log_dir=logs)
        procs.append(proc)
        line = proc.start()
        click.echo(f"        {name} (pid {proc.pid}): {line}")
        return proc

    ok = False
    watch = client = None
    try:
        click.secho(f"auxipc demo: runtime dir {root}", dim=True)
        step("Start the broker: it owns the bus and enforces the driver core's rules")
        start("broker", "broker")
        watch, client = Watcher(root), Client(root)
        is_ = lambda action, dev="ixd.eth.0": lambda r: r["kind"] == "bus" and r["action"] == action and r["dev"] == dev

        step("Start the PCI owner (model ixd): init + add ixd.eth.0; no driver matches yet")
        parent = start("parent-ixd", "parent", "--model", "ixd")
        watch.until(is_("ADD"), timeout=10, on_record=show)

        step("Start the auxiliary driver idpf_eth (id_table ixd.eth): it matches, probes and binds")
        start("child-idpf_eth", "child", "--driver", "idpf_eth")
        watch.until(is_("BIND"), lambda r: r["kind"] == "event" and r["event"] == "POST_CONFIG",
                    timeout=10, on_record=show)

        def send(event: str, side: str, payload: dict, expect_call: bool):
            out = client.send_event("ixd.eth.0", event, side, payload, 5.0)
            if out["errno"]:
                raise AuxError(out["errno"], f"{event}: {out['message']}")
            if expect_call:
                watch.until(lambda r: r["kind"] == "call" and r["event"] == event, timeout=5, on_record=show)
            else:
                watch.until(lambda r: r["kind"] == "event" and r["event"] == event, timeout=5, on_record=show)
            return out

        step("Parent -> child, async: a FW health event (fans out over pub/sub)")
        send("FW_EVENT", "parent", {"kind": "HEALTH", "state": 1}, False)
        step("Parent -> child, async: link up at 100 Gb/s")
        send("LINK_CHANGE", "parent", {"up": True, "speed_mbps": 100000, "duplex": "FULL", "autoneg": True}, False)
        step("Child -> parent, sync with a reply: program the primary MAC")
        out = send("SET_MAC", "child", {"addr": "02:00:5e:10:00:01"}, True)
        click.echo(f"        reply: {out['reply']}")

        step("Child -> parent, sync: request a FUNC reset (returns at once; the parent resets afterwards:\n"
             "    RESET_WARN to the child, which quiesces before replying; delete; reset; add; re-probe)")
        send("REQUEST_RESET", "child", {"reset_type": "FUNC"}, True)
        watch.until(lambda r: r["kind"] == "call" and r["event"] == "RESET_WARN", is_("BIND"),
                    lambda r: r["kind"] == "event" and r["event"] == "POST_CONFIG", timeout=10, on_record=show)

        step("Child -> parent, sync: a GLOBAL reset is not the child's to request: -EINVAL")
        bad = client.send_event("ixd.eth.0", "REQUEST_RESET", "child", {"reset_type": "GLOBAL"}, 5.0)
        click.echo(f"        REQUEST_RESET GLOBAL -> {bad['errno']} {bad['error']}: {bad['message']}")
        watch.until(lambda r: r["kind"] == "call" and r["event"] == "REQUEST_RESET", timeout=5, on_record=show)

        step("Stop the driver process: driver unregister runs remove() for its device")
        procs[-1].stop()
        watch.until(is_("UNBIND"), lambda r: r["kind"] == "bus" and r["action"] == "UNREGISTER",
                    timeout=10, on_record=show)

        step("Stop the PCI owner: delete + uninit; release() runs at the last put")
        parent.stop()
        watch.until(is_("RELEASE"), lambda r: r["kind"] == "bus" and r["action"] == "UNREGISTER",
                    timeout=10, on_record=show)
        ok = True
    except AuxError as exc:
        click.secho(f"demo failed: {exc}", fg="red", err=True)
        for p in procs:
            click.echo(f"  {p.name} log: {p.tail()}", err=True)
    finally:
        if watch is not None:
            watch.close()
        if client is not None:
            client.close()
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(logs, ignore_errors=True)
        if rec_file is not None:
            rec_file.close()
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
    if ok:
        click.secho(f"demo ok: {counts['steps']} steps, {counts['bus']} bus notifications, "
                    f"{counts['call']} sync calls, {counts['event']} async events; every process stopped", fg="green")
    return 0 if ok else 1
