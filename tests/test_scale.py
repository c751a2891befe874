"""A bus with many devices from many processes: ``ls`` shows them all (at 1,024
devices the whole snapshot is ~3.6 MB, more than a bus message: it is paged), and
16 parents x 64 devices with 16 drivers all bind (the timings are bench/scale.py's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from auxipc.testing.harness import Harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_pairs(h: Harness, pairs: int, devices: int) -> None:
    for k in range(pairs):
        env = {"AUXS_IDX": str(k)}
        h.start(f"sc-parent{k}", "parent", "--model", "bench.scale_models:ScaleParent", "--devices", str(devices),
                env=env, cwd=ROOT, timeout=60)
        h.start(f"sc-child{k}", "child", "--driver", "bench.scale_models:ScaleDriver", env=env, cwd=ROOT, timeout=60)


def all_bound(h: Harness, total: int) -> dict:
    return h.client.wait_for(lambda s: sum(d["bind"] == "bound" for d in s["devices"]) == total, timeout=50)


def test_ls_shows_every_process_s_devices():
    with Harness(prefix="axsc-") as h:
        h.broker()
        start_pairs(h, 2, 64)
        snap = all_bound(h, 128)
        assert len({d["name"] for d in snap["devices"]}) == 128
        out = subprocess.run([sys.executable, "-m", "auxipc", "ls", "--json"], capture_output=True, text=True,
                             timeout=30, env={**os.environ, "AUXIPC_RUNTIME_DIR": h.root})
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)["devices"]) == 128


@pytest.mark.slow
def test_sixteen_parents_by_64_devices_and_16_drivers_all_bind():
    with Harness(prefix="axsc-") as h:
        h.broker()
        start_pairs(h, 16, 64)
        snap = all_bound(h, 1024)
        assert len(snap["devices"]) == 1024 and len(snap["drivers"]) == 16
        out = subprocess.run([sys.executable, "-m", "auxipc", "ls"], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "AUXIPC_RUNTIME_DIR": h.root})
        assert out.returncode == 0 and "sc15.eth.63" in out.stdout
