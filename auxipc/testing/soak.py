"""``auxipc soak``: chaos under load, then the invariants.

A broker, the soak parent (devices soak.a.0, soak.b.0) and two drivers run
while their models load the bus (sync calls and async events both ways, every
10 ms per device). A seeded controller injects a fault every ``interval``:
SIGKILL a driver, SIGSTOP one (declared dead after missed heartbeats, then
SIGCONT: it re-registers), SIGKILL the parent, SIGKILL the broker — restarting
what it killed and timing the recovery. At the end everything is stopped and
the invariants checked:

- no call waited past its deadline (+0.5 s grace);
- no event reached an unbound driver; no duplicate delivery; per-device order;
- every reference returned (each device: the parent's, plus its driver's);
- no process, socket file or runtime dir left behind.
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter

from auxipc.observe.client import Client
from auxipc.process.launch import Proc
from auxipc.testing.harness import Harness
from proto.errno import AuxError, Errno

DEVICES = ("soak.a.0", "soak.b.0")
DRIVERS = {"soak.a.0": "soak_a", "soak.b.0": "soak_b"}


class Soak:
    def __init__(self, duration: float = 60.0, seed: int = 1, interval: float = 1.5, echo=print,
                 hb_ivl: float = 0.1):
        self.duration, self.seed, self.interval, self.echo = duration, seed, interval, echo
        self.hb_ivl = hb_ivl
        self.rng = random.Random(seed)
        self.data = tempfile.mkdtemp(prefix="axs-data-")
        self.h = Harness(prefix="axs-", env={"AUXIPC_SOAK_DIR": self.data}, grace=5.0)
        self.root = self.h.root
        self.procs: dict[str, Proc] = {}
        self.left: list[str] = []
        self.faults = Counter()
        self.times: dict[str, list[float]] = {"crash_to_unbind": [], "stop_to_detection": [],
                                              "kill_to_rebound": [], "broker_restart_to_recovered": []}
        self.failures: list[str] = []

    # ---- processes -----------------------------------------------------------------------

    def start(self, name: str) -> Proc:
        if name == "broker":
            proc = self.h.broker("--hb-ivl", str(self.hb_ivl), timeout=20.0, connect=False)
        else:
            args = {"parent": ["parent", "--model", "soak", "--devices", "2"],
                    "soak_a": ["child", "--driver", "soak_a"],
                    "soak_b": ["child", "--driver", "soak_b"]}[name]
            proc = self.h.start(name, *args, timeout=20.0)
        self.procs[name] = proc
        return proc

    def client(self) -> Client:
        return Client(self.root, timeout=2.0)

    def snapshot(self) -> dict | None:
        try:
            with self.client() as c:
                return c.query("ls")
        except AuxError:
            return None

    def wait(self, pred, timeout: float = 15.0) -> float:
        """Seconds until ``pred(snapshot)`` holds (polling the broker every 5 ms)."""
        t0 = time.monotonic()
        snap = None
        while time.monotonic() - t0 < timeout:
            snap = self.snapshot()
            if snap is not None and pred(snap):
                return time.monotonic() - t0
            time.sleep(0.005)
        seen = ("no broker answering" if snap is None else
                ", ".join(f"{d['name']} {d['bind']}" for d in snap["devices"]) or "no devices")
        raise AuxError(Errno.ETIMEDOUT, f"soak: condition not reached within {timeout:.0f} s (last seen: {seen})")

    @staticmethod
    def bound(snap: dict, dev: str) -> bool:
        return any(d["name"] == dev and d["bind"] == "bound" for d in snap["devices"])

    def all_bound(self, snap: dict) -> bool:
        return all(self.bound(snap, d) for d in DEVICES)

    # ---- faults ----------------------------------------------------------------------------

    def kill_driver(self) -> None:
        dev = self.rng.choice(DEVICES)
        name = DRIVERS[dev]
        t0 = time.monotonic()
        self.procs[name].signal(9)
        self.wait(lambda s: not self.bound(s, dev))
        self.times["crash_to_unbind"].append(time.monotonic() - t0)
        self.procs[name].stop(0)
        self.start(name)
        self.wait(lambda s: self.bound(s, dev))
        self.times["kill_to_rebound"].append(time.monotonic() - t0)

    def stop_driver(self) -> None:
        dev = self.rng.choice(DEVICES)
        name = DRIVERS[dev]
        proc = self.procs[name]
        t0 = time.monotonic()
        proc.signal(19)
        self.wait(lambda s: not self.bound(s, dev))
        self.times["stop_to_detection"].append(time.monotonic() - t0)
        proc.signal(18)      # it wakes, finds itself forgotten, re-registers, takes the device back
        self.wait(lambda s: self.bound(s, dev))

    def kill_parent(self) -> None:
        t0 = time.monotonic()
        self.procs["parent"].signal(9)
        self.wait(lambda s: not any(d["name"] in DEVICES for d in s["devices"]))
        self.procs["parent"].stop(0)
        self.start("parent")
        self.wait(self.all_bound)
        self.times["kill_to_rebound"].append(time.monotonic() - t0)

    def kill_broker(self) -> None:
        t0 = time.monotonic()
        self.procs["broker"].signal(9)
        self.procs["broker"].stop(0)
        self.start("broker")
        self.wait(self.all_bound)
        self.times["broker_restart_to_recovered"].append(time.monotonic() - t0)

    # ---- the run ---------------------------------------------------------------------------

    def run(self) -> dict:
        try:
            for name in ("broker", "parent", "soak_a", "soak_b"):
                self.start(name)
            self.wait(self.all_bound)
            actions = [("kill_driver", self.kill_driver), ("stop_driver", self.stop_driver),
                       ("kill_parent", self.kill_parent), ("kill_broker", self.kill_broker)]
            end = time.monotonic() + self.duration
            i = 0
            while time.monotonic() < end:
                time.sleep(self.interval * (0.5 + self.rng.random()))
                name, action = actions[i % len(actions)] if i < len(actions) else self.rng.choice(actions)
                i += 1
                at = f"+{self.duration - (end - time.monotonic()):5.1f}s {name}"
                self.echo(f"soak: {at}")
                try:
                    action()
                except AuxError as exc:
                    raise AuxError(exc.errno, f"{at.strip()}: {exc.message}") from None
                self.faults[name] += 1
            time.sleep(0.6)          # a last flush of every model's figures
            final = self.snapshot()
            self.check_references(final)
        except AuxError as exc:
            self.failures.append(f"soak aborted: {exc}")
        finally:
            self.left = self.h.stop_all()
        return self.report()

    def check_references(self, snap: dict | None) -> None:
        if snap is None:
            self.failures.append("no broker to check references with")
            return
        live = {f"{p['role']} {p['name']}[{p['pid']}]#{p['inc']}" for p in snap["peers"]}
        for dev in snap["devices"]:
            want = 2 if dev["bind"] == "bound" else 1
            if dev["refcount"] != want:
                self.failures.append(f"{dev['name']}: refcount {dev['refcount']}, expected {want} "
                                     f"(holders {dev['holders']})")
            for holder in dev["holders"]:
                if holder not in live:
                    self.failures.append(f"{dev['name']}: reference held by a dead peer {holder}")

    def report(self) -> dict:
        totals = {"parent": Counter(), "child": Counter()}
        worst = 0.0
        for path in glob.glob(os.path.join(self.data, "*.json")):
            with open(path) as f:
                d = json.load(f)
            totals[d["role"]].update(d["stats"])
            totals[d["role"]].update({f"runtime_{k}": v for k, v in d["runtime"].items()})
            worst = max(worst, d["worst_overrun_s"])
        for role, c in totals.items():
            for key in ("violation_unbound_delivery", "violation_duplicate", "violation_order", "deadline_overruns"):
                if c.get(key):
                    self.failures.append(f"{role}: {key} = {c[key]}")
        self.failures += self.left
        for pattern in ("*.sock", "*.lock"):
            if glob.glob(os.path.join(self.root, pattern)):
                self.failures.append(f"files left in {self.root}")
        if os.path.exists(self.root) and os.listdir(self.root):
            # The harness made the dir and removes it (the broker removes only what it
            # made): anything still in it was left behind.
            self.failures.append(f"runtime dir {self.root} not empty: {sorted(os.listdir(self.root))}")
        kept = None
        if self.failures:
            # what each process logged is the only account of a failed run: kept, and named in the report
            kept = tempfile.mkdtemp(prefix="auxipc-soak-logs-")
            shutil.copytree(self.h.logs, kept, dirs_exist_ok=True)
        self.h.close()
        shutil.rmtree(self.data, ignore_errors=True)
        times = {k: {"n": len(v), "median_ms": round(statistics.median(v) * 1000, 1) if v else None,
                     "max_ms": round(max(v) * 1000, 1) if v else None} for k, v in self.times.items()}
        calls = {role: {k: v for k, v in c.items() if k.startswith("calls")} for role, c in totals.items()}
        return {"ok": not self.failures, "failures": self.failures, "seed": self.seed,
                "duration_s": self.duration, "faults": dict(self.faults), "recovery": times, "calls": calls,
                "async": {role: {k: v for k, v in c.items() if "async" in k or k == "fw_event"}
                          for role, c in totals.items()},
                "worst_call_overrun_ms": round(worst * 1000, 1), "logs": kept}


class Load:
    """What a soak model does per bound device and tick, and the figures it keeps:
    an async event and a timed sync call (a call past its deadline + GRACE is a
    violation), written twice a second to ``$AUXIPC_SOAK_DIR/<role>-<name>-<pid>.json``
    (a SIGKILLed process cannot write at exit)."""

    TIMEOUT = 1.0
    GRACE = 0.5

    def __init__(self, role: str, name: str):
        self.role, self.name = role, name
        self.stats = Counter()
        self.worst_overrun = 0.0
        self.out = os.environ.get("AUXIPC_SOAK_DIR")

    def notify(self, adev, event, payload) -> None:
        try:
            adev.notify(event, payload)
            self.stats["async_sent"] += 1
        except AuxError as exc:
            self.stats[f"async_{exc.name}"] += 1

    def call(self, adev, event, payload) -> None:
        t0 = time.monotonic()
        try:
            adev.call(event, payload, timeout=self.TIMEOUT)
            self.stats["calls_ok"] += 1
        except AuxError as exc:
            self.stats[f"calls_{exc.name}"] += 1
        took = time.monotonic() - t0
        self.stats["calls"] += 1
        if took > self.TIMEOUT + self.GRACE:
            self.stats["deadline_overruns"] += 1
        self.worst_overrun = max(self.worst_overrun, took - self.TIMEOUT)

    def flush(self, rt) -> None:
        if not self.out:
            return
        data = {"role": self.role, "name": self.name, "pid": os.getpid(), "stats": dict(self.stats),
                "worst_overrun_s": self.worst_overrun, "runtime": dict(rt.stats)}
        path = os.path.join(self.out, f"{self.role}-{self.name}-{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(path + ".tmp", path)
