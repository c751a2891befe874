"""auxipc benchmark: floors and the real broker + runtimes, in one run, interleaved.

Usage (from the project root, with the venv's python):

    python bench/run.py                 # full run, 3 interleaved reps (~3 min)
    python bench/run.py --quick         # smoke test, 1 rep (~30 s)
    python bench/run.py --reps 5 --json out.json
    python bench/run.py --only aux_c2p,forwarder --pin-cpu -1
    python bench/run.py --profile /tmp/prof   # cProfile the auxipc processes, print hot spots

Every end is its own OS process: the floors are started with multiprocessing
``spawn``, auxipc with ``python -m auxipc broker|parent|child``
and the bench model/driver in bench/models.py. Each case is run once per rep;
the order rotates every rep; figures are medians across reps. Round trips are also
run with every process pinned to one CPU (``@pinned``): a cross-vCPU wake-up
costs ~30 us on the 2-vCPU VM. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from auxipc.testing.harness import Harness  # noqa: E402
from bench import dbus, floors, user  # noqa: E402
from bench.report import PIN, build_table, build_user_table, rt_stats, summarize, summarize_user  # noqa: E402
from proto.errno import AuxError  # noqa: E402

SPAWN = mp.get_context("spawn")
SRC = [ROOT]              # the tree whose auxipc is measured (--src / --rev change it)
DBUS: list = []           # the private dbus-daemon of this run, if dbus-daemon and dbus-fast are here
CHILDREN: list = []       # multiprocessing.Process: every floor end we start


class Failed(RuntimeError):
    pass


# ---- process helpers ---------------------------------------------------------------------

def start(target, *args):
    p = SPAWN.Process(target=target, args=args, daemon=False)
    p.start()
    CHILDREN.append(p)
    return p


def _dead_child():
    for p in CHILDREN:
        if p.exitcode not in (None, 0, -signal.SIGTERM):
            return f"pid {p.pid} exited with {p.exitcode}"
    return None


def wait_event(ev, what, timeout=30, step=0.05):
    deadline = time.monotonic() + timeout
    while not ev.wait(step):
        dead = _dead_child()
        if dead:
            raise Failed(f"{dead} while waiting for {what}")
        if time.monotonic() > deadline:
            raise Failed(f"timeout waiting for {what}")


def collect(conn, what, timeout=180):
    deadline = time.monotonic() + timeout
    while not conn.poll(0.1):
        dead = _dead_child()
        if dead:
            raise Failed(f"{dead} while waiting for {what}")
        if time.monotonic() > deadline:
            raise Failed(f"no result from {what} in {timeout} s")
    return conn.recv()


def finish(procs, timeout=10, quiet=False):
    """Join floor processes; terminate (then kill) any that does not stop by itself."""
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            if not quiet:
                print(f"  ! pid {p.pid} did not exit, terminating", file=sys.stderr)
            p.terminate()
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        if p in CHILDREN and not p.is_alive():
            CHILDREN.remove(p)


def reap_all():
    for p in list(CHILDREN):
        if p.is_alive():
            p.terminate()
            p.join(3)
            if p.is_alive():
                p.kill()
                p.join(3)
        CHILDREN.remove(p)


@contextlib.contextmanager
def pinned(cpu):
    """This process (hence every spawned floor end) on one CPU for the duration."""
    if cpu is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


# ---- CPU accounting ----------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def cpu_sample(pids: dict) -> dict:
    """role -> (CPU seconds of all its threads, context switches of all its threads, wall time)."""
    out = {}
    now = time.perf_counter()
    for role, pid in pids.items():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICK
            ctx = 0
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if "ctxt_switches:" in line:
                            ctx += int(line.split()[1])
            out[role] = (cpu, ctx, now)
        except (OSError, IndexError, ValueError):
            pass
    return out


def system_busy_s() -> float:
    """CPU seconds every CPU spent busy (not idle or iowait) since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / TICK


def own_cpu_s() -> float:
    """CPU seconds of this process and every child it has reaped (all bench processes)."""
    import resource
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def cpu_per_op(before: dict, after: dict, n: int) -> dict:
    """Per timed operation: CPU µs and context switches of each role (all threads), and
    the sampling window's length (it brackets the timed loop to within a few ms)."""
    res = {}
    for role in before:
        if role in after:
            res[role] = {"cpu_us": (after[role][0] - before[role][0]) / n * 1e6,
                         "ctx": (after[role][1] - before[role][1]) / n}
    if before and after:
        k = next(iter(before))
        if k in after:
            res["_window_s"] = after[k][2] - before[k][2]
    return res


# ---- floor cases ----------------------------------------------------------------------------

def _timed_client(procs, endpoint, svc, n, warm, stop, roles: dict) -> dict:
    """Start the DEALER client on ``endpoint`` and measure its timed loop: its round
    trips, and the CPU of the client (``caller``) and of ``roles`` (role -> index in
    ``procs``) while it ran."""
    rc, wc = SPAWN.Pipe(duplex=False)
    started = SPAWN.Event()
    procs.append(start(floors.dealer_client, endpoint, svc, warm, n, started, stop, wc))
    wait_event(started, "DEALER client warm-up", step=0.002)
    pids = {"caller": procs[-1].pid} | {role: procs[i].pid for role, i in roles.items()}
    c0 = cpu_sample(pids)
    res = collect(rc, "DEALER client")
    return rt_stats(res) | {"cpu": cpu_per_op(c0, cpu_sample(pids), n)}


def floor_direct(tmp, n, warm, cpu=None):
    ep = f"ipc://{tmp}/direct.ipc"
    ready, stop = SPAWN.Event(), SPAWN.Event()
    procs = []
    with pinned(cpu):
        try:
            procs.append(start(floors.router_echo, ep, ready, stop))
            wait_event(ready, "ROUTER echo")
            return _timed_client(procs, ep, None, n, warm, stop, {"callee": 0})
        finally:
            stop.set()
            finish(procs)


def floor_forwarder(tmp, n, warm, cpu=None):
    front, back = f"ipc://{tmp}/ff.ipc", f"ipc://{tmp}/fb.ipc"
    bready, wready, stop = SPAWN.Event(), SPAWN.Event(), SPAWN.Event()
    procs = []
    with pinned(cpu):
        try:
            procs.append(start(floors.forwarder, front, back, bready, wready, stop))
            wait_event(bready, "forwarder")
            procs.append(start(floors.dealer_worker, back, b"echo", stop))
            wait_event(wready, "worker registration")
            return _timed_client(procs, front, b"echo", n, warm, stop, {"broker": 0, "callee": 1})
        finally:
            stop.set()
            finish(procs)


def floor_pubsub(tmp, n, warm, via_proxy):
    joined, done, started, stop = SPAWN.Event(), SPAWN.Event(), SPAWN.Event(), SPAWN.Event()
    sr, sw = SPAWN.Pipe(duplex=False)
    rr, rw = SPAWN.Pipe(duplex=False)
    procs, prx = [], None
    try:
        if via_proxy:
            front, back = f"ipc://{tmp}/xsub.ipc", f"ipc://{tmp}/xpub.ipc"
            pready = SPAWN.Event()
            prx = start(floors.proxy, front, back, pready)
            wait_event(pready, "zmq.proxy")
            procs.append(start(floors.pub_sender, front, False, warm, n, joined, done, started, stop, sw))
            procs.append(start(floors.sub_receiver, back, warm, joined, done, rw))
        else:
            ep = f"ipc://{tmp}/ps.ipc"
            procs.append(start(floors.pub_sender, ep, True, warm, n, joined, done, started, stop, sw))
            procs.append(start(floors.sub_receiver, ep, warm, joined, done, rw))
        wait_event(started, "PUB warm-up", step=0.002)
        pids = {"caller": procs[0].pid, "callee": procs[1].pid} | ({"broker": prx.pid} if prx else {})
        c0 = cpu_sample(pids)
        r = collect(rr, "SUB receiver")
        c1 = cpu_sample(pids)
        stop.set()
        s = collect(sr, "PUB sender")
    finally:
        stop.set()
        finish(procs)
        if prx is not None:
            finish([prx], timeout=0, quiet=True)   # zmq.proxy never returns: SIGTERM it by pid
    dt = (r["t_last"] - r["t_first"]) / 1e9
    return {"sent": s["sent"], "received": r["received"], "lost": s["sent"] - r["received"],
            "gaps": r["gaps"], "send_msg_per_s": n / (s["send_ns"] / 1e9),
            "recv_msg_per_s": r["timed_n"] / dt if dt > 0 else 0.0, "cpu": cpu_per_op(c0, c1, n)}


def dbus_case(n, warm, cpu=None):
    """dbus-fast client -> our dbus-daemon -> dbus-fast Echo service, and back; pinned:
    the daemon too, on the same CPU, for the case's duration."""
    d = DBUS[0]
    ready, stop, started = SPAWN.Event(), SPAWN.Event(), SPAWN.Event()
    procs = []
    old = os.sched_getaffinity(d.pid)
    with pinned(cpu):
        if cpu is not None:
            os.sched_setaffinity(d.pid, {cpu})
        try:
            procs.append(start(dbus.echo_server, d.address, ready, stop))
            wait_event(ready, "D-Bus Echo service")
            rc, wc = SPAWN.Pipe(duplex=False)
            procs.append(start(dbus.echo_client, d.address, warm, n, started, wc))
            wait_event(started, "D-Bus client warm-up", step=0.002)
            pids = {"caller": procs[1].pid, "broker": d.pid, "callee": procs[0].pid}
            c0 = cpu_sample(pids)
            res = collect(rc, "D-Bus client")
            return rt_stats(res) | {"cpu": cpu_per_op(c0, cpu_sample(pids), n)}
        finally:
            stop.set()
            finish(procs)
            os.sched_setaffinity(d.pid, old)


# ---- auxipc cases ---------------------------------------------------------------------------

def aux_case(tmp, mode, n, warm, cpu=None, profile_dir=None, timeout=120, lane=None):
    """broker, parent, child as separate ``python -m auxipc`` processes on a fresh
    runtime dir (the project's bus harness, without its watcher and client: nothing
    but the three processes on the bus); the bench model/driver run the loop and
    write JSON into ``out``. ``lane`` True/False sets AUXIPC_LANE for every process
    (None: their default)."""
    out = tempfile.mkdtemp(prefix=f"{mode}-", dir=tmp)
    env = dict(AUXB_MODE=mode, AUXB_N=str(n), AUXB_WARM=str(warm), AUXB_OUT=out,
               **({} if lane is None else {"AUXIPC_LANE": "1" if lane else "0"}),
               PYTHONPATH=os.pathsep.join(dict.fromkeys([SRC[0], ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])))
    wrap = ["taskset", "-c", str(cpu)] if cpu is not None else []

    def launch(role):
        prof = ["-m", "cProfile", "-o", os.path.join(profile_dir, f"{mode}-{role}.prof")] if profile_dir else []
        return {"wrap": wrap, "py_args": prof, "cwd": SRC[0], "timeout": 30.0}

    want = {"c2p": ["child.json"], "c2q": ["child.json"], "p2c": ["parent.json"],
            "async": ["parent.json", "child.json"]}[mode]
    h = Harness(prefix="axb-", env=env)     # a short runtime dir under /tmp: ipc paths max 107 chars
    try:
        with pinned(cpu):
            procs = [h.broker(connect=False, **launch("broker")),
                     h.start("parent", "parent", "--model", "bench.models:BenchParent", **launch("parent")),
                     h.start("child", "child", "--driver", "bench.models:BenchDriver", **launch("child"))]
            caller = {"c2p": "child", "c2q": "child", "p2c": "parent", "async": "parent"}[mode]
            roles = dict(zip(("broker", "parent", "child"), procs))
            pids = {"caller": roles[caller].pid, "broker": roles["broker"].pid,
                    "callee": roles["child" if caller == "parent" else "parent"].pid}
            c0 = None
            deadline = time.monotonic() + timeout
            while not all(os.path.exists(os.path.join(out, w)) for w in want):
                if c0 is None and os.path.exists(os.path.join(out, "started")):
                    c0 = cpu_sample(pids)
                bad = [w for w in ("parent.json", "child.json") if os.path.exists(os.path.join(out, w))
                       and "error" in _load(os.path.join(out, w))]
                if bad:
                    raise Failed(f"{mode}: {_load(os.path.join(out, bad[0]))['trace']}")
                for role, q in roles.items():
                    if not q.alive():
                        raise Failed(f"auxipc {role} exited with {q.popen.poll()} during {mode}:\n{q.tail(15)}")
                if time.monotonic() > deadline:
                    raise Failed(f"{mode}: no result within {timeout} s")
                time.sleep(0.002 if c0 is None else 0.005)
            c1 = cpu_sample(pids)
            res = {w.split(".")[0]: _load(os.path.join(out, w)) for w in want}
            for side in res.values():
                if "error" in side:
                    raise Failed(f"{mode}: {side['trace']}")
    except AuxError as exc:        # a process that did not start: its log is in the message
        raise Failed(f"{mode}: {exc}") from None
    finally:
        left = h.close()           # child, parent, broker: each unregisters cleanly
        shutil.rmtree(out, ignore_errors=True)
    if left:
        raise Failed(f"{mode}: {'; '.join(left)}")
    cpu = cpu_per_op(c0 or {}, c1, n)
    if mode in ("c2p", "c2q"):
        return rt_stats(res["child"]) | {"stats": res["child"]["stats"], "cpu": cpu}
    if mode == "p2c":
        return rt_stats(res["parent"]) | {"stats": res["parent"]["stats"], "cpu": cpu}
    s, r = res["parent"], res["child"]
    dt = (r["t_last_ns"] - r["t_first_ns"]) / 1e9
    e2e = (r["t_last_ns"] - s["t0_mono_ns"]) / 1e9
    return {"sent": s["sent"], "received": r["received"], "lost": s["sent"] - r["received"],
            "gaps": r["gaps"], "failed": s["failed"],
            "async_lost": r["stats"].get("async_lost", 0),
            "async_dropped_hwm": s["stats"].get("async_dropped_hwm", 0),
            "send_msg_per_s": s["timed_n"] / (s["send_ns"] / 1e9),
            "recv_msg_per_s": r["timed_n"] / dt if dt > 0 and r["complete"] else 0.0,
            "e2e_msg_per_s": s["timed_n"] / e2e if e2e > 0 and r["complete"] else 0.0,
            "parent_stats": s["stats"], "child_stats": r["stats"], "cpu": cpu}


def _load(path):
    with open(path) as f:
        return json.load(f)


def export_rev(rev, dest):
    """``git archive REV`` of this checkout into ``dest``: measure a commit while the work
    tree is being edited. Returns the full hash."""
    full = subprocess.run(["git", "-C", ROOT, "rev-parse", "--verify", f"{rev}^{{commit}}"],
                          capture_output=True, text=True, check=True).stdout.strip()
    os.makedirs(dest)
    arch = subprocess.Popen(["git", "-C", ROOT, "archive", full], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", dest], stdin=arch.stdout, check=True)
    arch.stdout.close()
    if arch.wait() != 0:
        raise Failed(f"git archive {rev} failed")
    shutil.rmtree(os.path.join(dest, "bench"), ignore_errors=True)   # the bench itself: this checkout's
    return full


def source_info():
    """Which code the auxipc cases run: a --rev export or a tree (with git state if it has one)."""
    if SRC[0] != ROOT:
        return SRC[1] if len(SRC) > 1 else SRC[0]
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "auxipc", "proto",
                                "parent", "child"], capture_output=True, text=True).stdout.strip()
        return f"work tree at {head}" + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return ROOT


def sysinfo():
    import msgpack
    import zmq
    info = {"nproc": os.cpu_count(), "python": platform.python_version(), "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(), "msgpack": ".".join(map(str, msgpack.version)),
            "loadavg_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        info["cpu"] = "?"
    return info


# ---- profiling --------------------------------------------------------------------------------

def profile(tmp, args):
    """Run c2p and c2q over the direct lane (pinned: software cost only) and async once with
    every auxipc process under cProfile; print each process's top functions by own time."""
    import pstats
    os.makedirs(args.profile, exist_ok=True)
    pin = args.pin_cpu if args.pin_cpu >= 0 else None
    for mode, n, warm, cpu in (("c2p", args.n_aux, args.warm_aux, pin), ("c2q", args.n_aux, args.warm_aux, pin),
                               ("async", args.n_async, args.warm_async, None)):
        if args.only and mode not in args.only.split(","):
            continue
        r = aux_case(tmp, mode, n, warm, cpu=cpu, profile_dir=args.profile, lane=True if mode == "c2q" else None)
        print(f"\n### {mode} under cProfile (slower than unprofiled): "
              + (f"p50 {r['p50_us']:.1f} µs" if "p50_us" in r else f"recv {r['recv_msg_per_s']:,.0f} msg/s"))
        for role in ("broker", "parent", "child"):
            path = os.path.join(args.profile, f"{mode}-{role}.prof")
            if os.path.exists(path):
                print(f"\n--- {mode} {role}: top {args.profile_top} by tottime ({path})")
                st = pstats.Stats(path)
                st.strip_dirs().sort_stats("tottime").print_stats(args.profile_top)


# ---- main --------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 3; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="small N, 1 rep: smoke test under ~30 s")
    ap.add_argument("--json", metavar="FILE", help="write every rep's figures and the summary here")
    ap.add_argument("--only", default="", help="comma-separated case keys (direct, forwarder, aux_c2p, "
                    "aux_p2c, aux_c2q_lane, aux_c2q_broker, dbus, pubsub, pubsub_proxy, aux_async, fixture, "
                    "fixture_spawn, commands, rebound, "
                    "rebound_spawn; @pinned variants follow their base)")
    ap.add_argument("--pin-cpu", type=int, default=0, help="CPU for the @pinned round trips (-1: skip them)")
    ap.add_argument("--n-rt", type=int, default=10000, help="floor round trips per rep")
    ap.add_argument("--n-aux", type=int, default=5000, help="auxipc sync calls per rep")
    ap.add_argument("--n-pub", type=int, default=500000, help="floor PUB/SUB messages per rep")
    ap.add_argument("--n-async", type=int, default=100000, help="auxipc async events per rep")
    ap.add_argument("--n-fixture", type=int, default=10, help="auxbus tests per fixture run")
    ap.add_argument("--n-cmd", type=int, default=7, help="runs of each command per rep")
    ap.add_argument("--n-rebound", type=int, default=6, help="kills per rebound run")
    ap.add_argument("--rev", help="measure this git revision of auxipc (exported with git archive), "
                    "not the work tree: e.g. HEAD while the tree is being edited")
    ap.add_argument("--src", help="measure the auxipc in this project tree instead of this checkout")
    ap.add_argument("--profile", metavar="DIR", help="instead of the benchmark: profile auxipc c2p and async")
    ap.add_argument("--profile-top", type=int, default=25)
    args = ap.parse_args()
    if args.quick:
        args.n_rt, args.n_aux, args.n_pub, args.n_async = 2000, 1000, 50000, 10000
        args.n_fixture, args.n_cmd, args.n_rebound = 4, 3, 3
        args.reps = args.reps or 1
    args.reps = args.reps or 3
    args.warm_rt = max(1, args.n_rt // 10)
    args.warm_aux = max(1, args.n_aux // 10)
    args.warm_pub = max(1, args.n_pub // 50)
    args.warm_async = max(1, args.n_async // 20)

    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    info = sysinfo()
    if info["loadavg_start"][0] > 0.5:
        print(f"warning: load average {info['loadavg_start'][0]:.2f} before the run: other processes are "
              "busy and will move the figures", file=sys.stderr)
    tmp = tempfile.mkdtemp(prefix="axbench-", dir="/tmp")
    results: dict[str, list] = {}
    t_all = time.monotonic()
    busy0, own0 = system_busy_s(), own_cpu_s()
    try:
        if args.rev:
            full = export_rev(args.rev, os.path.join(tmp, "src"))
            SRC[:] = [os.path.join(tmp, "src"), f"git {args.rev} = {full[:12]}"]
        elif args.src:
            SRC[:] = [os.path.abspath(args.src)]
        info["source"] = source_info()
        info["dbus_skipped"] = dbus.missing()
        if info["dbus_skipped"] is None and not args.profile:
            DBUS.append(dbus.DBusDaemon(tmp))
            info["dbus_daemon"] = subprocess.run(["dbus-daemon", "--version"], capture_output=True,
                                                 text=True).stdout.splitlines()[0]
        if args.profile:
            return profile(tmp, args)
        plan = [
            ("direct", lambda cpu: floor_direct(tmp, args.n_rt, args.warm_rt, cpu), True),
            ("forwarder", lambda cpu: floor_forwarder(tmp, args.n_rt, args.warm_rt, cpu), True),
            ("aux_c2p", lambda cpu: aux_case(tmp, "c2p", args.n_aux, args.warm_aux, cpu), True),
            ("aux_p2c", lambda cpu: aux_case(tmp, "p2c", args.n_aux, args.warm_aux, cpu), True),
            # The direct lane (docs/protocol.md, section 8): a lane-eligible C->P call (QSET_ADD)
            # with the lane on and off; SET_MAC above is an rtnl event and always takes the broker.
            ("aux_c2q_lane", lambda cpu: aux_case(tmp, "c2q", args.n_aux, args.warm_aux, cpu, lane=True), True),
            ("aux_c2q_broker", lambda cpu: aux_case(tmp, "c2q", args.n_aux, args.warm_aux, cpu, lane=False), True),
            ("pubsub", lambda cpu: floor_pubsub(tmp, args.n_pub, args.warm_pub, False), False),
            ("pubsub_proxy", lambda cpu: floor_pubsub(tmp, args.n_pub, args.warm_pub, True), False),
            ("aux_async", lambda cpu: aux_case(tmp, "async", args.n_async, args.warm_async), False),
        ]
        if DBUS:
            plan.insert(2, ("dbus", lambda cpu: dbus_case(args.n_rt, args.warm_rt, cpu), True))
        user_plan = [
            ("fixture", lambda: user.fixture_case(tmp, args.n_fixture, zygote=True)),
            ("fixture_spawn", lambda: user.fixture_case(tmp, max(2, args.n_fixture // 3), zygote=False)),
            ("commands", lambda: user.commands_case(tmp, args.n_cmd)),
            ("rebound", lambda: user.rebound_case(tmp, args.n_rebound, zygote=True)),
            ("rebound_spawn", lambda: user.rebound_case(tmp, max(2, args.n_rebound // 2), zygote=False)),
        ]
        cases = []
        for key, fn, rt in plan:
            cases.append((key, lambda fn=fn: fn(None)))
            if rt and args.pin_cpu >= 0:
                cases.append((key + PIN, lambda fn=fn: fn(args.pin_cpu)))
        cases += user_plan
        if args.only:
            keep = set(args.only.split(","))
            cases = [c for c in cases if c[0] in keep or c[0].split("@")[0] in keep]
        for rep in range(args.reps):
            k = (rep * len(cases)) // args.reps          # rotate: drift hits every case alike
            for key, fn in cases[k:] + cases[:k]:
                t0 = time.monotonic()
                r = fn()
                results.setdefault(key, []).append(r)
                fig = (f"p50={r['p50_us']:.1f}us p99={r['p99_us']:.1f}us" if "p50_us" in r else
                       f"recv={r['recv_msg_per_s']:,.0f}/s lost={r['lost']}" if "recv_msg_per_s" in r else
                       f"start={r['start_ms']:.0f}ms teardown={r['teardown_ms']:.0f}ms" if "start_ms" in r else
                       f"median={r['median_ms']:.0f}ms" if "median_ms" in r else
                       " ".join(f"{k.split()[-1]}={v['median_ms']:.0f}ms" for k, v in r.items()))
                print(f"[rep {rep + 1}/{args.reps}] {key:20s} {time.monotonic() - t0:5.1f}s  {fig}",
                      file=sys.stderr, flush=True)
    finally:
        reap_all()
        if DBUS:
            DBUS.pop().stop()
        shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    info["wall_s"] = round(time.monotonic() - t_all, 1)
    info["other_cpu_s"] = round(max(0.0, (system_busy_s() - busy0) - (own_cpu_s() - own0)), 1)
    user_keys = {k for k, _ in user_plan}
    summary = summarize({k: v for k, v in results.items() if k not in user_keys})
    usum = summarize_user({k: v for k, v in results.items() if k in user_keys})
    print(build_table(summary, info, args))
    print(build_user_table(usum, summary, info, args))
    other = info["other_cpu_s"] / info["wall_s"] if info["wall_s"] else 0.0
    print(f"\n(total wall {info['wall_s']} s; processes other than the bench used {info['other_cpu_s']} CPU-s "
          f"meanwhile = {other:.2f} of a CPU on average{' — figures are noisy' if other > 0.1 else ''}; "
          f"loadavg start {info['loadavg_start'][0]:.2f}, end {info['loadavg_end'][0]:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "args": vars(args), "summary": summary, "user": usum,
                       "runs": {k: [{x: y for x, y in r.items() if x != "lat"} for r in v]
                                for k, v in results.items()}}, f, indent=1)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; every process was stopped", file=sys.stderr)
        sys.exit(130)
