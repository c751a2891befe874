"""Scale and transport cases of the bench (figures go into bench/results.md):

1. 16 parent processes x 64 devices and 16 driver processes on one host (ipc):
   time until all 1,024 devices are bound (from launching the 32 processes at
   once, and from the last one's ready line), the sync round trip p50 on one
   device with 1 vs 1,024 devices on the bus, broker RSS per device, and the
   wall time of ``auxipc ls`` (the CLI process, and the query alone).
2. Sync round trip p50 over ipc, plain TCP and CURVE TCP in one run; TCP across
   two network namespaces joined by a veth pair (root; skipped with the reason
   otherwise), parent and driver in one namespace, the broker in the other.

    .venv/bin/python bench/scale.py [--parents 16 --devices 64 --n 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from auxipc import keys  # noqa: E402
from auxipc.testing.harness import Harness  # noqa: E402
from auxipc.testing.netns import NetPair, unavailable  # noqa: E402
from bench.report import rt_stats  # noqa: E402


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rtt(h: Harness, n: int, env: dict | None = None, wrap=()) -> dict:
    """The bench's parent loops RESET_WARN on axb.eth.0 n times; its p50/p90 (µs)."""
    with tempfile.TemporaryDirectory(prefix="axsc-out-") as out:
        env = {"AUXB_MODE": "p2c", "AUXB_N": str(n), "AUXB_WARM": str(min(500, n // 4)), "AUXB_OUT": out, **(env or {})}
        child = h.start("bench-child", "child", "--driver", "bench.models:BenchDriver", env=env, cwd=ROOT, wrap=wrap)
        parent = h.start("bench-parent", "parent", "--model", "bench.models:BenchParent", env=env, cwd=ROOT, wrap=wrap)
        path = os.path.join(out, "parent.json")
        deadline = time.monotonic() + 120
        while not os.path.exists(path):
            if time.monotonic() > deadline or not parent.alive():
                raise RuntimeError(f"no RTT result: {parent.tail()}")
            time.sleep(0.05)
        with open(path) as f:
            res = json.load(f)
        if "error" in res:
            raise RuntimeError(res["error"])
        h.stop(parent)
        h.stop(child)
        return rt_stats(res)


def scale_case(parents: int, devices: int, n: int) -> dict:
    out: dict = {"parents": parents, "devices_each": devices, "drivers": parents}
    # The 32 processes start from a pool's threads at once; a process dies with the
    # thread that launched it (PR_SET_PDEATHSIG), so the pool lives as long as the bus.
    with ThreadPoolExecutor(2 * parents) as pool, Harness(prefix="axsc-") as h:
        h.broker()
        bpid = h.broker_proc.pid
        out["rtt_1"] = rtt(h, n)
        rss0 = rss_kib(bpid)

        def launch(k: int, role: str):
            env = {"AUXS_IDX": str(k)}
            if role == "parent":
                return h.start(f"sc-parent{k}", "parent", "--model", "bench.scale_models:ScaleParent",
                               "--devices", str(devices), env=env, cwd=ROOT, timeout=120)
            return h.start(f"sc-child{k}", "child", "--driver", "bench.scale_models:ScaleDriver", env=env,
                           cwd=ROOT, timeout=120)
        total = parents * devices
        t0 = time.monotonic()
        list(pool.map(lambda a: launch(*a), [(k, r) for k in range(parents) for r in ("parent", "child")]))
        t_ready = time.monotonic()
        while True:
            snap = h.ls()
            bound = sum(1 for d in snap["devices"] if d["bind"] == "bound")
            if bound >= total:
                break
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"only {bound}/{total} bound after 120 s: {h.logs_tail()}")
            time.sleep(0.02)
        t_bound = time.monotonic()
        out["bound"] = bound
        out["all_bound_from_launch_s"] = t_bound - t0
        out["all_bound_after_last_ready_s"] = t_bound - t_ready
        rss1 = rss_kib(bpid)
        out["broker_rss_kib"] = [rss0, rss1]
        out["broker_rss_per_device_kib"] = (rss1 - rss0) / total
        walls, queries = [], []
        env = {**os.environ, "AUXIPC_RUNTIME_DIR": h.root}
        for _ in range(5):
            t = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "auxipc", "ls"], env=env, capture_output=True, timeout=60)
            walls.append(time.monotonic() - t)
            assert r.returncode == 0, r.stderr
            t = time.monotonic()
            h.ls()
            queries.append(time.monotonic() - t)
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", "import auxipc.cli.main"], env=env, timeout=60)
        out["cli_import_s"] = time.monotonic() - t
        out["ls_cli_wall_s"] = sorted(walls)[2]
        out["ls_query_s"] = sorted(queries)[2]
        out["rtt_1024"] = rtt(h, n)
        out["rtt_ratio"] = out["rtt_1024"]["p50_us"] / out["rtt_1"]["p50_us"]
    return out


def transport_case(n: int) -> dict:
    out: dict = {}
    with Harness(prefix="axsc-") as h:
        h.broker()
        out["ipc"] = rtt(h, n)
    why = unavailable()
    if why:
        out["tcp_skipped"] = why
        return out
    saved = {k: os.environ.get(k) for k in ("AUXIPC_KEYS", "AUXIPC_KEY_NAME")}
    kd = tempfile.mkdtemp(prefix="axsc-keys-")   # removed in the finally below
    os.environ.update(AUXIPC_KEYS=kd, AUXIPC_KEY_NAME="hostb")
    try:
        keys.create("broker")
        keys.admit(keys.create("hostb"))
        with NetPair("axs") as net:
            for name, insecure in (("tcp", True), ("curve", False)):
                url = f"tcp://{net.addr_a}:7710"
                env = {"AUXIPC_CONNECT": url, **({"AUXIPC_INSECURE": "1"} if insecure else {})}
                with Harness(prefix="axsc-") as h:
                    h.broker("--listen", url, *(["--insecure"] if insecure else []), wrap=net.wrap(net.a))
                    out[name] = rtt(h, n, env, wrap=net.wrap(net.b))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(kd, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parents", type=int, default=16)
    ap.add_argument("--devices", type=int, default=64)
    ap.add_argument("--n", type=int, default=2000, help="timed round trips per RTT figure")
    ap.add_argument("--only", choices=["scale", "transport"])
    ap.add_argument("--json")
    args = ap.parse_args()
    res: dict = {}
    if args.only != "transport":
        res["scale"] = s = scale_case(args.parents, args.devices, args.n)
        print(f"{s['bound']} devices bound: {s['all_bound_from_launch_s']:.2f} s from launching "
              f"{2 * args.parents} processes ({s['all_bound_after_last_ready_s']:.2f} s after the last was ready)")
        print(f"sync RTT p50: {s['rtt_1']['p50_us']:.1f} µs with 1 device, {s['rtt_1024']['p50_us']:.1f} µs "
              f"with {s['bound'] + 1}: {s['rtt_ratio']:.2f}x")
        print(f"broker RSS {s['broker_rss_kib'][0]} -> {s['broker_rss_kib'][1]} KiB: "
              f"{s['broker_rss_per_device_kib']:.1f} KiB per device")
        print(f"auxipc ls: {s['ls_cli_wall_s']:.3f} s CLI wall (of which {s['cli_import_s']:.3f} s starting "
              f"python and importing the CLI), {s['ls_query_s'] * 1000:.1f} ms the query alone (median of 5)")
    if args.only != "scale":
        res["transport"] = t = transport_case(args.n)
        for k in ("ipc", "tcp", "curve"):
            if k in t:
                print(f"sync RTT over {k}: p50 {t[k]['p50_us']:.1f} µs, p90 {t[k]['p90_us']:.1f} µs")
        if "tcp_skipped" in t:
            print(f"tcp and curve skipped: {t['tcp_skipped']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
