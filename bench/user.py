"""The speed a user feels: a bus per test, command wall times, kill -> rebound.

Each case measures the real thing from outside, the way a user meets it:
- ``fixture``: pytest runs a generated module of tests that each take the ``auxbus``
  fixture, start the ixd parent and the idpf_eth child and wait until ixd.eth.0 is
  bound; a fixture requested before ``auxbus`` stamps the times (start: fixture
  start -> bound; teardown: end of the test -> the bus closed). Run with the zygote
  and with ``AUXIPC_ZYGOTE=0`` (plain spawn) in the same run.
- ``commands``: ``auxipc --help``, ``ls``, ``send``, ``wait`` against a live bus, each
  a fresh process timed from outside (``perf_counter`` around ``subprocess.run``),
  median of several runs; the anchor is ``python -c "import zmq, msgpack, click"``;
  bytecode caching on (``__pycache__``), as a user's install has it.
- ``rebound``: ``auxipc up`` (ixd + idpf_eth); SIGKILL the driver and time until the
  broker publishes BIND of ixd.eth.0 again, seen by a watcher subscribed beforehand.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIXTURE_TEST = '''
import json, os, time
import pytest

@pytest.fixture
def timed():
    rec = {"t0": time.perf_counter()}
    yield rec
    rec["t_end"] = time.perf_counter()
    with open(os.environ["AUXB_FX_OUT"], "a") as f:
        f.write(json.dumps(rec) + "\\n")

@pytest.mark.parametrize("i", range(int(os.environ["AUXB_FX_N"])))
def test_bus(timed, auxbus, i):
    auxbus.parent("ixd")
    auxbus.child("idpf_eth")
    auxbus.wait_bound("ixd.eth.0")
    timed["t_bound"] = time.perf_counter()
'''


def _tree_env(env: dict, tree: str | None) -> dict:
    """``env`` for running another checkout's auxipc (``tree``, e.g. a ``git archive`` of
    main: before/after figures): it goes first on PYTHONPATH and is the cwd."""
    if tree:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (tree, env.get("PYTHONPATH")) if p)
    return env


def fixture_case(tmp: str, n: int, zygote: bool, tree: str | None = None) -> dict:
    """``n`` auxbus tests in one pytest; start and teardown per test (median; the first,
    which also starts the zygote, reported apart), and the whole pytest's wall time."""
    d = tempfile.mkdtemp(prefix="fx-", dir=tmp)
    with open(os.path.join(d, "test_fx.py"), "w") as f:
        f.write(FIXTURE_TEST)
    with open(os.path.join(d, "pytest.ini"), "w") as f:
        f.write("[pytest]\ntimeout = 60\n")
    out = os.path.join(d, "times.jsonl")
    env = _tree_env({**os.environ, "AUXB_FX_OUT": out, "AUXB_FX_N": str(n), "AUXIPC_ZYGOTE": "1" if zygote else "0"},
                    tree)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "--rootdir", d, "-c",
                        os.path.join(d, "pytest.ini"), os.path.join(d, "test_fx.py")], cwd=tree or d, env=env,
                       capture_output=True, text=True, timeout=60 + 10 * n)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"fixture case (zygote={zygote}) failed:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
    with open(out) as f:
        recs = [json.loads(line) for line in f]
    start = [(x["t_bound"] - x["t0"]) * 1e3 for x in recs]
    down = [(x["t_end"] - x["t_bound"]) * 1e3 for x in recs]
    return {"n": len(recs), "start_ms": statistics.median(start[1:] or start), "first_start_ms": start[0],
            "start_max_ms": max(start[1:] or start), "teardown_ms": statistics.median(down),
            "teardown_max_ms": max(down), "pytest_wall_s": wall, "per_test_ms": wall * 1e3 / len(recs)}


def _auxipc_cmd(tree: str | None = None) -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "auxipc")
    return [script] if os.path.exists(script) and not tree else [sys.executable, "-m", "auxipc"]


def _wall(argv: list[str], env: dict, cwd: str = ROOT) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       timeout=30)
    dt = (time.perf_counter() - t0) * 1e3
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return dt


def commands_case(tmp: str, runs: int, tree: str | None = None) -> dict:
    """Median wall ms of each command (fresh process each run, interleaved), and of the anchor."""
    from auxipc.testing.harness import Harness
    h = Harness(prefix="axc-")
    try:
        h.broker(connect=False)
        h.parent("ixd")
        h.child("idpf_eth")
        from auxipc.observe import conditions
        conditions.wait("bound", "ixd.eth.0", 10.0, h.root)
        # bytecode caching on, as an installed user has it (a PYTHONDONTWRITEBYTECODE=1 shell
        # compiles every auxipc module on every command: +30-50 ms); the warm-up run writes it
        env = _tree_env({k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, tree)
        env["AUXIPC_RUNTIME_DIR"] = h.root
        aux = _auxipc_cmd(tree)
        cmds = {
            "anchor: python -c 'import zmq, msgpack, click'": [sys.executable, "-c", "import zmq, msgpack, click"],
            "auxipc --help": [*aux, "--help"],
            "auxipc ls": [*aux, "ls"],
            "auxipc send": [*aux, "send", "ixd.eth.0", "FW_EVENT", "--from", "parent",
                            "--payload", '{"kind": "HEALTH", "state": 2}'],
            "auxipc wait": [*aux, "wait", "bound", "ixd.eth.0"],
        }
        for argv in cmds.values():     # warm the page cache once
            _wall(argv, env, tree or ROOT)
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(runs):
            for k, argv in cmds.items():
                times[k].append(_wall(argv, env, tree or ROOT))
    finally:
        left = h.close()
    if left:
        raise RuntimeError("; ".join(left))
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "runs": len(v)}
            for k, v in times.items()}


REBOUND_SCENARIO = textwrap.dedent("""
    name = "rebound"
    [supervisor]
    strategy = "one_for_one"
    intensity = 1000
    period = 0.25
    [[process]]
    name = "ixd"
    role = "parent"
    model = "ixd"
    [[process]]
    name = "idpf_eth"
    role = "child"
    driver = "idpf_eth"
""")


def rebound_case(tmp: str, n: int, zygote: bool = True, tree: str | None = None) -> dict:
    """``auxipc up``; ``n`` times: SIGKILL idpf_eth, time until ixd.eth.0 is bound again.
    Between kills the driver stays up past the supervisor's period (0.25 s here), so each
    kill is a first failure, as a rare crash is, not a crash loop (that one backs off)."""
    from auxipc.observe.watch import Watcher
    from auxipc.process.supervisor import supervisor_client
    root = tempfile.mkdtemp(prefix="axr-", dir="/tmp")
    scen = os.path.join(tmp, "rebound.toml")
    with open(scen, "w") as f:
        f.write(REBOUND_SCENARIO)
    env = _tree_env({**os.environ, "AUXIPC_ZYGOTE": "1" if zygote else "0", "PYTHONUNBUFFERED": "1"}, tree)
    up = subprocess.Popen([*_auxipc_cmd(tree), "up", scen, "--runtime-dir", root], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env, text=True, start_new_session=True, cwd=tree)
    lines = []
    try:
        deadline = time.monotonic() + 30
        while True:
            line = up.stdout.readline()
            lines.append(line)
            if "ready" in line and line.startswith("auxipc up"):
                break
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"auxipc up did not start: {''.join(lines)[-2000:]}")
        w = Watcher(root)
        samples = []
        try:
            for _ in range(n):
                procs = {p["name"]: p for p in supervisor_client(root, "ps")["processes"]}
                pid = procs["idpf_eth"]["pid"]
                while True:     # up past the period: this kill is a first failure
                    procs = {p["name"]: p for p in supervisor_client(root, "ps")["processes"]}
                    if (procs["idpf_eth"]["uptime_s"] or 0) >= 0.35:
                        break
                    time.sleep(0.05)
                while w.next(0) is not None:
                    pass
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                w.until(lambda r: r.get("kind") == "bus" and r.get("action") == "BIND"
                        and r.get("dev") == "ixd.eth.0", timeout=10)
                samples.append((time.perf_counter() - t0) * 1e3)
        finally:
            w.close()
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(15)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        up.stdout.close()
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    return {"n": len(samples), "median_ms": statistics.median(samples), "min_ms": min(samples),
            "max_ms": max(samples)}


if __name__ == "__main__":
    # python bench/user.py [--tree DIR] [fixture] [commands] [rebound]: the cases alone; with
    # --tree, of another checkout (before/after: git archive main | tar -x -C DIR)
    sys.path.insert(0, ROOT)
    args = sys.argv[1:]
    tree = None
    if args[:1] == ["--tree"]:
        tree, args = os.path.abspath(args[1]), args[2:]
    tmp = tempfile.mkdtemp(prefix="axu-", dir="/tmp")
    which = args or ["fixture", "commands", "rebound"]
    if "fixture" in which:
        print("fixture spawn", json.dumps(fixture_case(tmp, 5, False, tree)))
        if not tree:
            print("fixture zygote", json.dumps(fixture_case(tmp, 10, True)))
    if "commands" in which:
        print(json.dumps(commands_case(tmp, 7, tree), indent=1))
    if "rebound" in which:
        print("rebound spawn", json.dumps(rebound_case(tmp, 4, zygote=False, tree=tree)))
        if not tree:
            print("rebound zygote", json.dumps(rebound_case(tmp, 6)))
