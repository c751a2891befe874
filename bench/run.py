"""auxipc benchmark: floors and the real broker + runtimes, in one run, interleaved.

Usage (from the project root, with the venv's python):

    python bench/run.py                 # full run, 3 interleaved reps (~3 min)
    python bench/run.py --quick         # smoke test, 1 rep (~30 s)
    python bench/run.py --reps 5 --json out.json
    python bench/run.py --only aux_c2p,forwarder --pin-cpu -1
    python bench/run.py --profile /tmp/prof   # cProfile the auxipc processes, print hot spots

Every end is its own OS process: the floors are started with multiprocessing
``spawn`` (like shared/anchors), auxipc with ``python -m auxipc broker|parent|child``
and the bench model/driver in bench/models.py. Each case is run once per rep;
the order rotates every rep; figures are medians across reps. Round trips are also
run with every process pinned to one CPU (``@pinned``): see shared/anchors/README.md
for why (a cross-vCPU wake-up costs ~30 us on the 2-vCPU VM). See bench/README.md.
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
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import floors  # noqa: E402

SPAWN = mp.get_context("spawn")
CHILDREN: list = []       # multiprocessing.Process: every floor end we start
POPENS: list = []         # subprocess.Popen: every auxipc process we start
PIN = "@pinned"

RT_TARGET = 1.25          # auxipc round-trip p50 <= 1.25 x the forwarder floor's
ASYNC_TARGET = 0.5        # auxipc async recv msg/s >= 0.5 x raw PUB/SUB's, zero loss


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
    for p in POPENS:
        if p.poll() is not None:
            return f"{' '.join(p.args[-5:])} (pid {p.pid}) exited with {p.returncode}"
    return None


def wait_event(ev, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not ev.wait(0.05):
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


def stop_popen(p, grace=5.0):
    """SIGTERM by pid, wait, SIGKILL: auxipc processes stop cleanly on SIGTERM."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            print(f"  ! pid {p.pid} ignored SIGTERM for {grace} s, killing", file=sys.stderr)
            p.kill()
            p.wait(5)
    if p in POPENS:
        POPENS.remove(p)


def reap_all():
    for p in list(reversed(POPENS)):
        stop_popen(p, 3.0)
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


# ---- statistics --------------------------------------------------------------------------

def pct(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * q
    f = int(k)
    c = min(f + 1, len(sorted_vals) - 1)
    return sorted_vals[f] + (sorted_vals[c] - sorted_vals[f]) * (k - f)


def rt_stats(res):
    lat = sorted(res["lat"])
    return {"n": len(lat), "p50_us": pct(lat, 0.50) / 1e3, "p90_us": pct(lat, 0.90) / 1e3,
            "p99_us": pct(lat, 0.99) / 1e3, "max_us": lat[-1] / 1e3,
            "rt_per_s": len(lat) / (res["total_ns"] / 1e9)}


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else float("nan")


# ---- floor cases ----------------------------------------------------------------------------

def floor_direct(tmp, n, warm, cpu=None):
    ep = f"ipc://{tmp}/direct.ipc"
    ready, stop = SPAWN.Event(), SPAWN.Event()
    procs = []
    with pinned(cpu):
        try:
            procs.append(start(floors.router_echo, ep, ready, stop))
            wait_event(ready, "ROUTER echo")
            rc, wc = SPAWN.Pipe(duplex=False)
            procs.append(start(floors.dealer_client, ep, None, warm, n, wc))
            res = collect(rc, "DEALER client")
        finally:
            stop.set()
            finish(procs)
    return rt_stats(res)


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
            rc, wc = SPAWN.Pipe(duplex=False)
            procs.append(start(floors.dealer_client, front, b"echo", warm, n, wc))
            res = collect(rc, "DEALER client")
        finally:
            stop.set()
            finish(procs)
    return rt_stats(res)


def floor_pubsub(tmp, n, warm, via_proxy):
    joined, done = SPAWN.Event(), SPAWN.Event()
    sr, sw = SPAWN.Pipe(duplex=False)
    rr, rw = SPAWN.Pipe(duplex=False)
    procs, prx = [], None
    try:
        if via_proxy:
            front, back = f"ipc://{tmp}/xsub.ipc", f"ipc://{tmp}/xpub.ipc"
            pready = SPAWN.Event()
            prx = start(floors.proxy, front, back, pready)
            wait_event(pready, "zmq.proxy")
            procs.append(start(floors.sub_receiver, back, warm, joined, done, rw))
            procs.append(start(floors.pub_sender, front, False, warm, n, joined, done, sw))
        else:
            ep = f"ipc://{tmp}/ps.ipc"
            procs.append(start(floors.pub_sender, ep, True, warm, n, joined, done, sw))
            procs.append(start(floors.sub_receiver, ep, warm, joined, done, rw))
        s = collect(sr, "PUB sender")
        r = collect(rr, "SUB receiver")
    finally:
        finish(procs)
        if prx is not None:
            finish([prx], timeout=0, quiet=True)   # zmq.proxy never returns: SIGTERM it by pid
    dt = (r["t_last"] - r["t_first"]) / 1e9
    return {"sent": s["sent"], "received": r["received"], "lost": s["sent"] - r["received"],
            "gaps": r["gaps"], "send_msg_per_s": n / (s["send_ns"] / 1e9),
            "recv_msg_per_s": r["timed_n"] / dt if dt > 0 else 0.0}


# ---- auxipc cases ---------------------------------------------------------------------------

def _wait_line(p, log, word, what, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        with open(log, errors="replace") as f:
            if word in f.read():
                return
        if p.poll() is not None:
            raise Failed(f"{what} exited with {p.returncode} before it was ready:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise Failed(f"{what} not ready within {timeout} s:\n{_tail(log)}")
        time.sleep(0.01)


def _tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def aux_case(tmp, mode, n, warm, cpu=None, profile_dir=None, timeout=120):
    """broker, parent, child as separate ``python -m auxipc`` processes on a fresh
    runtime dir; the bench model/driver run the loop and write JSON into ``out``."""
    rdir = tempfile.mkdtemp(prefix="axb-", dir="/tmp")     # short: ipc paths max 107 chars
    out = tempfile.mkdtemp(prefix=f"{mode}-", dir=tmp)
    env = dict(os.environ, AUXB_MODE=mode, AUXB_N=str(n), AUXB_WARM=str(warm), AUXB_OUT=out,
               PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("AUXIPC_RUNTIME_DIR", None)
    pre = ["taskset", "-c", str(cpu)] if cpu is not None else []
    procs = []

    def launch(role, *args):
        log = os.path.join(out, f"{role}.log")
        py = [sys.executable]
        if profile_dir:
            py += ["-m", "cProfile", "-o", os.path.join(profile_dir, f"{mode}-{role}.prof")]
        with open(log, "w") as f:
            p = subprocess.Popen(pre + py + ["-m", "auxipc", role, "--runtime-dir", rdir, *args],
                                 cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        POPENS.append(p)
        procs.append(p)
        return p, log

    want = {"c2p": ["child.json"], "p2c": ["parent.json"], "async": ["parent.json", "child.json"]}[mode]
    try:
        with pinned(cpu):
            b, blog = launch("broker")
            _wait_line(b, blog, "ready", "auxipc broker")
            p, plog = launch("parent", "--model", "bench.models:BenchParent")
            _wait_line(p, plog, "ready", "auxipc parent")
            launch("child", "--driver", "bench.models:BenchDriver")
            deadline = time.monotonic() + timeout
            while not all(os.path.exists(os.path.join(out, w)) for w in want):
                bad = [w for w in ("parent.json", "child.json") if os.path.exists(os.path.join(out, w))
                       and "error" in _load(os.path.join(out, w))]
                if bad:
                    raise Failed(f"{mode}: {_load(os.path.join(out, bad[0]))['trace']}")
                for q, role in zip(procs, ("broker", "parent", "child")):
                    if q.poll() is not None:
                        raise Failed(f"auxipc {role} exited with {q.returncode} during {mode}:\n"
                                     + _tail(os.path.join(out, f"{role}.log")))
                if time.monotonic() > deadline:
                    raise Failed(f"{mode}: no result within {timeout} s")
                time.sleep(0.02)
            res = {w.split(".")[0]: _load(os.path.join(out, w)) for w in want}
            for side in res.values():
                if "error" in side:
                    raise Failed(f"{mode}: {side['trace']}")
    finally:
        for q in reversed(procs):          # child, parent, broker: each unregisters cleanly
            stop_popen(q)
        shutil.rmtree(rdir, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    if mode == "c2p":
        return rt_stats(res["child"]) | {"stats": res["child"]["stats"]}
    if mode == "p2c":
        return rt_stats(res["parent"]) | {"stats": res["parent"]["stats"]}
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
            "parent_stats": s["stats"], "child_stats": r["stats"]}


def _load(path):
    with open(path) as f:
        return json.load(f)


# ---- report ---------------------------------------------------------------------------------

RT_ROWS = [
    ("direct", "floor: DEALER → ROUTER direct (pyzmq + msgpack)"),
    ("forwarder", "floor: DEALER → Python ROUTER/ROUTER forwarder → DEALER"),
    ("aux_c2p", "auxipc: child→parent SET_MAC call (via broker)"),
    ("aux_p2c", "auxipc: parent→child RESET_WARN call (via broker)"),
]
TP_ROWS = [
    ("pubsub", "floor: PUB → SUB, HWM unlimited"),
    ("pubsub_proxy", "floor: PUB → XSUB/XPUB zmq.proxy → SUB"),
    ("aux_async", "auxipc: parent→child LINK_CHANGE notify (via broker)"),
]


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


def summarize(results):
    s = {}
    for key, runs in results.items():
        if "p50_us" in runs[0]:
            p50s = [r["p50_us"] for r in runs]
            s[key] = {"n": runs[0]["n"], "p50_us": med(p50s), "p90_us": med([r["p90_us"] for r in runs]),
                      "p99_us": med([r["p99_us"] for r in runs]), "rt_per_s": med([r["rt_per_s"] for r in runs]),
                      "p50_min": min(p50s), "p50_max": max(p50s), "reps": len(runs)}
        else:
            rr = [r["recv_msg_per_s"] for r in runs]
            s[key] = {"sent": runs[0]["sent"], "recv_msg_per_s": med(rr),
                      "send_msg_per_s": med([r["send_msg_per_s"] for r in runs]),
                      "recv_min": min(rr), "recv_max": max(rr), "lost_max": max(r["lost"] for r in runs),
                      "gaps_max": max(r["gaps"] for r in runs), "reps": len(runs)}
            if key == "aux_async":
                s[key] |= {"e2e_msg_per_s": med([r["e2e_msg_per_s"] for r in runs]),
                           "async_lost": sum(r["async_lost"] for r in runs),
                           "async_dropped_hwm": sum(r["async_dropped_hwm"] for r in runs),
                           "failed": sum(r["failed"] for r in runs),
                           "received": [r["received"] for r in runs]}
    return s


def build_table(s, info, args):
    out = []
    add = out.append
    add(f"auxipc bench: {info.get('cpu')} | nproc={info['nproc']} | Python {info['python']} | "
        f"pyzmq {info['pyzmq']} / libzmq {info['libzmq']} | msgpack {info['msgpack']}")
    add(f"Each figure = median of {args.reps} interleaved rep(s); p50 range across reps in the last column.")
    add("")
    add("| case | placement | N | p50 µs | p90 µs | p99 µs | calls/s | p50 range µs |")
    add("|------|-----------|--:|-------:|-------:|-------:|--------:|--------------|")
    for suffix, place in (("", "free"), (PIN, f"pinned cpu{args.pin_cpu}")):
        for key, label in RT_ROWS:
            r = s.get(key + suffix)
            if r:
                add(f"| {label} | {place} | {r['n']} | {r['p50_us']:.1f} | {r['p90_us']:.1f} | "
                    f"{r['p99_us']:.1f} | {r['rt_per_s']:,.0f} | {r['p50_min']:.1f}–{r['p50_max']:.1f} |")
    add("")
    add("| case | msgs/run | recv msg/s | send msg/s | lost (max) | recv msg/s range |")
    add("|------|---------:|-----------:|-----------:|-----------:|------------------|")
    for key, label in TP_ROWS:
        r = s.get(key)
        if r:
            add(f"| {label} | {r['sent']:,} | {r['recv_msg_per_s']:,.0f} | {r['send_msg_per_s']:,.0f} | "
                f"{r['lost_max']:,} | {r['recv_min']:,.0f}–{r['recv_max']:,.0f} |")
    a = s.get("aux_async")
    if a:
        add(f"\nauxipc async: end-to-end (parent's first timed send → child's last receive) "
            f"{a['e2e_msg_per_s']:,.0f} msg/s; received per rep {a['received']}; async_lost={a['async_lost']} "
            f"async_dropped_hwm={a['async_dropped_hwm']} notify failures={a['failed']} (sums over reps)")
    add("")
    add("| target | auxipc | floor | ratio | target | verdict |")
    add("|--------|-------:|------:|------:|--------|---------|")
    for suffix, place in (("", "free"), (PIN, "pinned")):
        f = s.get("forwarder" + suffix)
        d = s.get("direct" + suffix)
        for key, what in (("aux_c2p", "c2p SET_MAC"), ("aux_p2c", "p2c RESET_WARN")):
            r = s.get(key + suffix)
            if r and f:
                ratio = r["p50_us"] / f["p50_us"]
                extra = f" (direct {r['p50_us'] / d['p50_us']:.2f}x)" if d else ""
                add(f"| {what} p50, {place} | {r['p50_us']:.1f} µs | forwarder {f['p50_us']:.1f} µs | "
                    f"{ratio:.2f}x{extra} | ≤ {RT_TARGET}x | {'PASS' if ratio <= RT_TARGET else 'MISS'} |")
    p = s.get("pubsub")
    if a and p:
        ratio = a["recv_msg_per_s"] / p["recv_msg_per_s"]
        lossless = a["lost_max"] == 0 and a["async_lost"] == 0 and a["async_dropped_hwm"] == 0 \
            and a["failed"] == 0 and a["gaps_max"] == 0
        px = s.get("pubsub_proxy")
        extra = f" (proxy floor {a['recv_msg_per_s'] / px['recv_msg_per_s']:.2f}x)" if px else ""
        add(f"| async LINK_CHANGE recv msg/s | {a['recv_msg_per_s']:,.0f} | PUB/SUB {p['recv_msg_per_s']:,.0f} | "
            f"{ratio:.2f}x{extra} | ≥ {ASYNC_TARGET}x, zero loss | "
            f"{'PASS' if ratio >= ASYNC_TARGET and lossless else 'MISS'}"
            f"{'' if lossless else ' (LOSS)'} |")
    return "\n".join(out)


# ---- profiling --------------------------------------------------------------------------------

def profile(tmp, args):
    """Run c2p (pinned: software cost only) and async once with every auxipc process under
    cProfile; print each process's top functions by own time."""
    import pstats
    os.makedirs(args.profile, exist_ok=True)
    for mode, n, warm, cpu in (("c2p", args.n_aux, args.warm_aux, args.pin_cpu if args.pin_cpu >= 0 else None),
                               ("async", args.n_async, args.warm_async, None)):
        r = aux_case(tmp, mode, n, warm, cpu=cpu, profile_dir=args.profile)
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
                    "aux_p2c, pubsub, pubsub_proxy, aux_async; @pinned variants follow their base)")
    ap.add_argument("--pin-cpu", type=int, default=0, help="CPU for the @pinned round trips (-1: skip them)")
    ap.add_argument("--n-rt", type=int, default=20000, help="floor round trips per rep")
    ap.add_argument("--n-aux", type=int, default=10000, help="auxipc sync calls per rep")
    ap.add_argument("--n-pub", type=int, default=500000, help="floor PUB/SUB messages per rep")
    ap.add_argument("--n-async", type=int, default=100000, help="auxipc async events per rep")
    ap.add_argument("--profile", metavar="DIR", help="instead of the benchmark: profile auxipc c2p and async")
    ap.add_argument("--profile-top", type=int, default=25)
    args = ap.parse_args()
    if args.quick:
        args.n_rt, args.n_aux, args.n_pub, args.n_async = 2000, 1000, 50000, 10000
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
    tmp = tempfile.mkdtemp(prefix="axbench-", dir="/tmp")
    results: dict[str, list] = {}
    t_all = time.monotonic()
    try:
        if args.profile:
            return profile(tmp, args)
        plan = [
            ("direct", lambda cpu: floor_direct(tmp, args.n_rt, args.warm_rt, cpu), True),
            ("forwarder", lambda cpu: floor_forwarder(tmp, args.n_rt, args.warm_rt, cpu), True),
            ("aux_c2p", lambda cpu: aux_case(tmp, "c2p", args.n_aux, args.warm_aux, cpu), True),
            ("aux_p2c", lambda cpu: aux_case(tmp, "p2c", args.n_aux, args.warm_aux, cpu), True),
            ("pubsub", lambda cpu: floor_pubsub(tmp, args.n_pub, args.warm_pub, False), False),
            ("pubsub_proxy", lambda cpu: floor_pubsub(tmp, args.n_pub, args.warm_pub, True), False),
            ("aux_async", lambda cpu: aux_case(tmp, "async", args.n_async, args.warm_async), False),
        ]
        cases = []
        for key, fn, rt in plan:
            cases.append((key, lambda fn=fn: fn(None)))
            if rt and args.pin_cpu >= 0:
                cases.append((key + PIN, lambda fn=fn: fn(args.pin_cpu)))
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
                       f"recv={r['recv_msg_per_s']:,.0f}/s lost={r['lost']}")
                print(f"[rep {rep + 1}/{args.reps}] {key:20s} {time.monotonic() - t0:5.1f}s  {fig}",
                      file=sys.stderr, flush=True)
    finally:
        reap_all()
        shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    info["wall_s"] = round(time.monotonic() - t_all, 1)
    summary = summarize(results)
    print(build_table(summary, info, args))
    print(f"\n(total wall {info['wall_s']} s; loadavg start {info['loadavg_start']}, end {info['loadavg_end']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "args": vars(args), "summary": summary,
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
