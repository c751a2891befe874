"""``auxipc demo model-a`` / ``model-b``: the proposal's two diagrams, end to end.

Same contract, two very different parents. Model A: ``ixd``, the foundational
NIC, owns the PCI function and IDPF (``idpf_eth``) is its aux driver: a FW
event goes down, a DCB change and a reset request go up. Model B: on an IPU,
``idpf`` owns the PCI function and IDPF' (``idpf_prime``) is its aux driver:
queue enable and post-config go up, the link change comes down. Both parents
have emulated hardware behind them (parent/hw/): their changes print as
``hw`` lines between the bus notifications, calls and events of the timeline.
"""

from __future__ import annotations

import json
import os
import signal

import click

from auxipc.observe.trace import format_trace, is_hw
from auxipc.process.launch import Proc
from auxipc.testing.harness import Harness
from proto.errno import AuxError, errno_name

HIDDEN_HW = ("plug", "unplug", "post_config")     # the bus lines say it already


def _compact(v) -> str:
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else str(v)


class Demo:
    """A demo's timeline over a ``Harness``: numbered steps, every record printed as it comes."""

    def __init__(self, title: str, runtime_dir: str | None, record: str | None):
        self.title = title
        self.h = Harness(runtime_dir, prefix="auxipc-demo-", record=record, on_record=self.show)
        self.counts = {"steps": 0, "bus": 0, "call": 0, "event": 0, "hw": 0}

    # ---- output ----

    def show(self, rec: dict) -> None:
        if is_hw(rec):
            if rec["detail"].get("what") in HIDDEN_HW:
                return
            self.counts["hw"] += 1
        else:
            self.counts[rec["kind"]] = self.counts.get(rec["kind"], 0) + 1
        click.echo("        " + format_trace(rec, payload_limit=0))

    def settle(self) -> None:
        """Print every record stamped before now (those in flight wait the watcher's reorder
        window): what the last step caused is printed under it, not under the next."""
        if self.h.watcher is not None:
            for rec in self.h.watcher.settle():
                self.h.add(rec)

    def step(self, text: str) -> None:
        self.settle()
        self.counts["steps"] += 1
        click.secho(f"[{self.counts['steps']}] {text}", bold=True)

    def say(self, text: str) -> None:
        click.echo(f"        {text}")

    # ---- processes and traffic ----

    def start(self, name: str, *args: str, env: dict | None = None) -> Proc:
        proc = self.h.start(name, *args, env=env)
        self.say(f"{name} (pid {proc.pid}): {proc.ready_line}")
        self.h.connect()
        return proc

    def stop(self, proc: Proc) -> int | None:
        return self.h.stop(proc)

    def until(self, *preds, timeout: float = 10.0) -> list[dict]:
        return self.h.until(*preds, timeout=timeout)

    def send(self, dev: str, event: str, side: str, payload: dict | None = None, expect: str | None = None,
             wait=(), timeout: float = 5.0, own: bool = True) -> dict:
        """Send through the named side's runtime; print the result; wait for its call (sync)
        or event (async) record and ``wait``'s predicates. ``expect``: the errno name wanted."""
        out = self.h.send(dev, event, payload, side=side, timeout=timeout)
        got = errno_name(out["errno"]) if out["errno"] else None
        if got != expect:
            raise AuxError(abs(out["errno"]) or 5, f"{event} on {dev}: expected {expect or 0}, got "
                           f"{got or 0}: {out['message']}")
        self.say(f"-> {event} = {out['errno']}" + (f" {got}: {out['message']}" if got else "")
                 + (f"  reply {_compact(out['reply'])}" if out["reply"] else ""))
        if own:     # the call's own record (sync) or the event's (async)
            wait = (ev(event) if (out["message"] or "").startswith("published") else call(event), *wait)
        if wait:
            self.until(*wait, timeout=timeout + 5)
        return out

    def signal(self, proc: Proc, sig: int) -> None:
        os.kill(proc.pid, sig)

    def run(self, body) -> int:
        ok = False
        try:
            click.secho(f"{self.title}\n(runtime dir {self.h.root})", dim=True)
            body(self)
            self.settle()
            ok = True
        except AuxError as exc:
            click.secho(f"demo failed: {exc}", fg="red", err=True)
            click.echo(self.h.logs_tail(), err=True)
        finally:
            problems = self.h.close()
        if problems:
            click.secho(f"demo failed: {'; '.join(problems)}", fg="red", err=True)
            return 1
        if ok:
            c = self.counts
            hw = f", {c['hw']} hardware changes" if c["hw"] else ""
            click.secho(f"demo ok: {c['steps']} steps, {c['bus']} bus notifications, {c['call']} sync calls, "
                        f"{c['event']} async events{hw}; every process stopped", fg="green")
        return 0 if ok else 1


# ---- predicates on watcher records ----

def bus(action: str, dev: str | None = None):
    return lambda r: r["kind"] == "bus" and r["action"] == action and (dev is None or r["dev"] == dev)


def call(event: str, errno: int | None = None):
    return lambda r: r["kind"] == "call" and r["event"] == event and (errno is None or r["errno"] == errno)


def ev(event: str, **payload):
    return lambda r: r["kind"] == "event" and r["event"] == event and all(
        r["payload"].get(k) == v for k, v in payload.items())


def hw(what: str, **detail):
    return lambda r: is_hw(r) and r["detail"].get("what") == what and all(
        r["detail"].get(k) == v for k, v in detail.items())


def dcb(prio_tc, bw, pfc_en=0) -> dict:
    return {"ets": {"tc_tx_bw": bw, "tc_rx_bw": bw, "tc_tsa": ["ETS"] * 8, "prio_tc": prio_tc},
            "pfc": {"pfc_en": pfc_en}}


# ---- Model A ----

def model_a(d: Demo) -> None:
    dev = "ixd.eth.0"
    d.step("Start the broker")
    d.start("broker", "broker")
    d.step("Start ixd, Model A's PCI owner, with its emulated hardware: a 100 Gb/s port, a 4-TC\n"
           "    scheduler with 8 leaves per TC, a FW mailbox; it adds ixd.eth.0")
    parent = d.start("parent-ixd", "parent", "--model", "ixd",
                     env={"AUXIPC_HW": "report=1,leaves_per_tc=8,mbx_latency=0.002"})
    d.until(bus("ADD", dev))
    d.step("Start IDPF (idpf_eth): it binds, learns the link, asks for 4 queues (QUEUE_CONFIG answers\n"
           "    with the queue ids), enables them (ENABLE_QUEUES: 4 scheduler leaves), then POST_CONFIG")
    d.start("child-idpf_eth", "child", "--driver", "idpf_eth")
    d.until(bus("BIND", dev), hw("queues", state="enabled"), ev("POST_CONFIG"))

    d.step("FW event down: the PHY loses carrier and gets it back; the FW reports both (SIGUSR2 to ixd)\n"
           "    and ixd sends LINK_CHANGE, async, to every netdev child")
    d.signal(parent, signal.SIGUSR2)
    d.until(ev("LINK_CHANGE", up=False), ev("LINK_CHANGE", up=True))

    d.step("DCB change up (pain point 1): dcbnl sets 2 TCs on the netdev (priorities 0-3 -> TC0 60 %,\n"
           "    4-7 -> TC1 40 %, PFC on priority 4); IDPF forwards DCB_CONFIG under rtnl; ixd validates,\n"
           "    programs ETS/PFC and returns; its worker sends BEFORE_TC_CHANGE, re-shapes the scheduling\n"
           "    tree, then AFTER_TC_CHANGE with the new QoS to every child of the function")
    d.send(dev, "DCB_CONFIG", "child", dcb([0, 0, 0, 0, 1, 1, 1, 1], [60, 40, 0, 0, 0, 0, 0, 0], 0x10),
           wait=(call("BEFORE_TC_CHANGE"), call("AFTER_TC_CHANGE"), hw("tc_change")))
    d.step("The same with traffic classes 0 and 2 (not contiguous): refused, naming the field; no TC change")
    d.send(dev, "DCB_CONFIG", "child", dcb([0, 0, 0, 0, 2, 2, 2, 2], [60, 0, 40, 0, 0, 0, 0, 0]), expect="EINVAL")

    d.step("Netshaper (pain point 2): cap Tx queue 1 at 2 Gb/s; the limit lands on that queue's\n"
           "    scheduler leaf. Queue 9 does not exist, 1 kb/s is below what the hardware can shape")
    d.send(dev, "NETSHAPER_SET", "child", {"handle": {"scope": "QUEUE", "id": 1}, "bw_max": 2_000_000_000},
           wait=(hw("shaper"),))
    d.send(dev, "NETSHAPER_SET", "child", {"handle": {"scope": "QUEUE", "id": 9}, "bw_max": 2_000_000_000},
           expect="EINVAL")
    d.send(dev, "NETSHAPER_SET", "child", {"handle": {"scope": "NETDEV"}, "bw_max": 1000}, expect="EINVAL")

    d.step("Queue enable (pain point 3), the error path: 20 queues on a second vport get their ids,\n"
           "    but enabling them needs 10 leaves per TC where there are 8: -ENOSPC; the leaves it had placed\n"
           "    are given back")
    d.send(dev, "QUEUE_CONFIG", "child", {"vport_id": 1, "num_txq": 20, "num_rxq": 20})
    d.send(dev, "ENABLE_QUEUES", "child", {"vport_id": 1}, expect="ENOSPC", wait=(hw("queues", state="refused"),))

    d.step("Reset request up: REQUEST_RESET FUNC returns at once; ixd's worker sends RESET_WARN (IDPF\n"
           "    quiesces before replying), unplugs ixd.eth.0, resets the hardware (queues, qsets, shapers\n"
           "    gone; DCB kept), plugs it again: IDPF re-probes, learns the QoS and enables its queues again")
    d.send(dev, "REQUEST_RESET", "child", {"reset_type": "FUNC"},
           wait=(call("RESET_WARN"), bus("UNBIND", dev), bus("BIND", dev), call("AFTER_TC_CHANGE"),
                 hw("reset", state="IDLE"), ev("POST_CONFIG")))
    d.step("A GLOBAL reset is not the child's to request (ice_rdma_request_reset): -EINVAL")
    d.send(dev, "REQUEST_RESET", "child", {"reset_type": "GLOBAL"}, expect="EINVAL")

    d.step("PCI remove of ixd: PREPARE_DETACH to IDPF, delete, uninit; release() at the last put")
    d.stop(parent)
    d.until(call("PREPARE_DETACH"), bus("RELEASE", dev), bus("UNREGISTER"))


# ---- Model B ----

def model_b(d: Demo) -> None:
    dev = "idpf.eth.0"
    d.step("Start the broker")
    d.start("broker", "broker")
    d.step("Start idpf, Model B's PCI owner on an IPU: the function's resources belong to the IPU's\n"
           "    control plane, 20 ms away over the virtchnl mailbox; the vport's link is down until it is\n"
           "    configured. It adds idpf.eth.0")
    parent = d.start("parent-idpf", "parent", "--model", "idpf",
                     env={"AUXIPC_HW": "report=1,mbx_timeout=0.3,reset_max_txq=2,reset_max_rxq=2"})
    d.until(bus("ADD", dev))
    d.step("Start IDPF' (idpf_prime). Enable queues and post-config up: QUEUE_CONFIG and ENABLE_QUEUES\n"
           "    each wait for the control plane, then POST_CONFIG. Link change down: the control plane\n"
           "    brings the vport's link up, idpf sends LINK_CHANGE")
    d.start("child-idpf_prime", "child", "--driver", "idpf_prime")
    d.until(bus("BIND", dev), call("QUEUE_CONFIG", 0), call("ENABLE_QUEUES", 0), ev("POST_CONFIG"),
            ev("LINK_CHANGE", up=True))

    d.step("Same contract, different parent: DCB belongs to the IPU's control plane, so idpf does not\n"
           "    handle DCB_CONFIG; IDPF' knew from discovery, and the request is -EOPNOTSUPP")
    d.send(dev, "DCB_CONFIG", "child", dcb([0] * 8, [100, 0, 0, 0, 0, 0, 0, 0]), expect="EOPNOTSUPP", own=False)

    d.step("A virtchnl message passed through to the control plane: VERSION (2.0)")
    d.send(dev, "VIRTCHNL_PASSTHROUGH", "child", {"op": 1, "timeout_ms": 1000})

    d.step("The control plane stops answering (SIGUSR1 to idpf): a FW health event goes down; a request\n"
           "    now times out in the mailbox: -ETIME. Then it answers again")
    d.signal(parent, signal.SIGUSR1)
    d.until(ev("FW_EVENT", state=1))
    d.send(dev, "VIRTCHNL_PASSTHROUGH", "child", {"op": 1, "timeout_ms": 200}, expect="ETIME")
    d.signal(parent, signal.SIGUSR1)
    d.until(ev("FW_EVENT", state=0))

    d.step("Reset request up: no unplug in Model B. The vport's link goes down, RESET_WARN (IDPF'\n"
           "    quiesces), the reset, CAPS_CHANGE (the control plane now hands out 2 queues), then\n"
           "    RESET_COMPLETE: IDPF' stays bound and reopens with 2 queues; the link comes back")
    d.send(dev, "REQUEST_RESET", "child", {"reset_type": "FUNC"},
           wait=(ev("LINK_CHANGE", up=False), call("RESET_WARN"), call("CAPS_CHANGE"), ev("RESET_COMPLETE"),
                 hw("queues", state="enabled"), ev("POST_CONFIG", num_txq=2), ev("LINK_CHANGE", up=True)),
           timeout=8)

    d.step("PCI remove of idpf: PREPARE_DETACH to IDPF', delete, uninit; release() at the last put")
    d.stop(parent)
    d.until(call("PREPARE_DETACH"), bus("RELEASE", dev), bus("UNREGISTER"))


MODELS = {
    "model-a": ("auxipc demo model-a: ixd (the foundational NIC, PCI owner) and IDPF (its aux driver)", model_a),
    "model-b": ("auxipc demo model-b: idpf (PCI owner on an IPU) and IDPF' (its aux driver)", model_b),
}


def run_model_demo(which: str, runtime_dir: str | None = None, record: str | None = None) -> int:
    title, body = MODELS[which]
    return Demo(title, runtime_dir, record).run(body)
