"""A house a user can live in: user code loads from where the user stands, a user's
own ``child.py`` (``proto.py``, ``parent.py``) is named as the cause in one line, and
``import auxipc`` / ``auxipc --help`` stay light (no zmq)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from auxipc.procfs import gone

BIN = Path(sys.executable).parent
AUXIPC = str(BIN / "auxipc")       # the console script, as a user runs it

MY_ETH = '''
from auxipc import AuxDriver


class MyEth(AuxDriver):
    name = "my_eth"
    id_table = ("ixd.eth",)
'''


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="axt-cwd-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def run(argv, cwd, timeout=30, env=None):
    env = {k: v for k, v in (env or os.environ).items() if k != "PYTHONPATH"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_console_script_loads_a_driver_from_the_current_directory(auxbus, workdir):
    (workdir / "mymodule.py").write_text(MY_ETH)
    auxbus.parent("ixd")
    proc = subprocess.Popen([AUXIPC, "child", "--driver", "mymodule:MyEth", "--runtime-dir", auxbus.runtime_dir],
                            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    try:
        line = proc.stdout.readline()
        assert "ready" in line, line + proc.stderr.read()
        assert auxbus.wait_bound("ixd.eth.0") == "ixd.eth.0 is added, bound to my_eth"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.mark.slow
def test_an_import_failure_names_the_module_and_where_it_looked(workdir):
    r = run([AUXIPC, "child", "--driver", "nosuchmod:MyEth", "--runtime-dir", str(workdir / "rt")], workdir)
    assert r.returncode == 1
    err = r.stderr.strip()
    assert err.startswith("auxipc: ENOENT: cannot load driver 'nosuchmod:MyEth': no module 'nosuchmod' (looked in ")
    assert str(workdir) in err and "Traceback" not in err and len(err.splitlines()) == 1

    (workdir / "broken.py").write_text("import nosuchdependency\n")
    r = run([AUXIPC, "parent", "--model", "broken:Model", "--runtime-dir", str(workdir / "rt")], workdir)
    assert r.returncode == 1
    assert r.stderr.strip() == ("auxipc: ENOENT: cannot load parent model 'broken:Model': importing broken failed: "
                                "ModuleNotFoundError: No module named 'nosuchdependency'")

    (workdir / "mymodule.py").write_text(MY_ETH)
    r = run([AUXIPC, "child", "--driver", "mymodule:Nope", "--runtime-dir", str(workdir / "rt")], workdir)
    assert r.stderr.strip() == (f"auxipc: ENOENT: cannot load driver 'mymodule:Nope': module mymodule "
                                f"({workdir / 'mymodule.py'}) has no 'Nope'")


@pytest.mark.parametrize("name", ["proto", "parent", "child"])
def test_a_users_module_shadowing_a_package_is_named_in_one_line(workdir, name):
    (workdir / f"{name}.py").write_text("x = 1\n")
    r = run([sys.executable, "-m", "auxipc", "ls", "--runtime-dir", str(workdir / "rt")], workdir)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"auxipc: ENOENT: {name!r} resolves to {workdir / (name + '.py')}, not auxipc's "
                               "package "), r.stderr
    assert f"a module of yours named {name}.py shadows it" in r.stderr


SHADOWED_TEST = '''
def test_uses_the_fixture(auxbus):
    auxbus.parent("ixd")
'''


@pytest.mark.slow
def test_the_fixture_names_a_shadowing_child_py(workdir):
    (workdir / "child.py").write_text("x = 1\n")
    (workdir / "test_mine.py").write_text(SHADOWED_TEST)
    (workdir / "pytest.ini").write_text("[pytest]\ntimeout = 30\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTHONPATH")}
    r = run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", str(workdir)],
            workdir, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert f"auxbus: ENOENT: 'child' resolves to {workdir / 'child.py'}, not auxipc's package" in out, out
    assert "internal error" not in out and "Traceback" not in out


def modules_after(code: list[str]) -> set[str]:
    r = run(code, "/", timeout=30)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


SHOW = "import sys; print(' '.join(sys.modules))"


def test_import_auxipc_and_help_do_not_import_zmq():
    mods = modules_after([sys.executable, "-c", "import auxipc; auxipc.__version__; " + SHOW])
    assert "zmq" not in mods and "msgpack" not in mods
    mods = modules_after([sys.executable, "-c", "import sys; sys.argv = ['auxipc', '--help']\n"
                          "import atexit; atexit.register(lambda: print(' '.join(sys.modules)))\n"
                          "from auxipc.cli import run; run(prog_name='auxipc')"])
    assert "zmq" not in mods, sorted(m for m in mods if "zmq" in m)


def test_the_public_api_is_lazy_and_complete():
    import auxipc
    for name in auxipc.__all__:
        assert getattr(auxipc, name) is not None, name
    with pytest.raises(AttributeError, match="module 'auxipc' has no attribute 'Nope'"):
        auxipc.Nope  # noqa: B018
    assert set(auxipc.__all__) <= set(dir(auxipc))


def test_leftover_check_sees_only_the_processes_of_its_own_run():
    from auxipc.procfs import cmdline, gone, main, tagged
    tag = f"house-{os.getpid()}"
    mine = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                            env={**os.environ, "AUXIPC_TEST_RUN": tag})
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                             env={**os.environ, "AUXIPC_TEST_RUN": tag + "-other"})
    try:
        assert tagged("AUXIPC_TEST_RUN", tag) == [mine.pid]
        assert cmdline(mine.pid)[:2] == [sys.executable, "-c"]
        assert main([f"AUXIPC_TEST_RUN={tag}"]) == 1
    finally:
        for p in (mine, other):
            p.communicate(b"", timeout=10)
    assert gone(mine.pid) and tagged("AUXIPC_TEST_RUN", tag) == [] and main([f"AUXIPC_TEST_RUN={tag}"]) == 0


@pytest.mark.slow
def test_the_harness_runs_a_bus_records_it_and_leaves_nothing(tmp_path):
    from auxipc.testing.harness import Harness
    shown = []
    with Harness(record=str(tmp_path / "trace.jsonl"), on_record=shown.append) as h:
        h.broker()
        parent, child = h.parent("ixd"), h.child("idpf_eth")
        h.until(lambda r: r["kind"] == "bus" and r["action"] == "BIND", timeout=10)
        assert h.send("ixd.eth.0", "SET_MAC", {"addr": "02:00:00:00:00:01"})["errno"] == 0
        call = h.expect(kind="call", event="SET_MAC", errno=0)
        assert (call["src"], call["dst"]) == ("child idpf_eth", "parent ixd")
        assert h.find("idpf_eth") is child and h.stop(child) == 0
        pids, root, logs = [h.broker_pid, parent.pid, child.pid], h.root, h.logs
    assert all(gone(pid) for pid in pids) and not os.path.exists(root) and not os.path.exists(logs)
    written = (tmp_path / "trace.jsonl").read_text().splitlines()
    assert len(written) == len(shown) == len(h.records) and any('"SET_MAC"' in line for line in written)
