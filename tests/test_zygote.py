"""The zygote (auxipc/process/zygote.py) and what starts through it, and the commands'
lazy imports: a forked process must be indistinguishable from a spawned one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import click
import pytest

from auxipc.process import zygote
from auxipc.process.launch import Proc
from auxipc.procfs import cmdline, gone, process_start_time
from auxipc.testing.harness import Harness

pytestmark = pytest.mark.timeout(60)

needs_zygote = pytest.mark.skipif(not zygote.enabled(), reason="AUXIPC_ZYGOTE=0: processes are spawned")


@pytest.fixture
def root():
    d = tempfile.mkdtemp(prefix="axz-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Until ``pid`` exits; pidfd: woken by the exit itself, not by a sleep."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        import select
        assert select.select([fd], [], [], timeout)[0], f"pid {pid} still running after {timeout} s"
    finally:
        os.close(fd)


@needs_zygote
def test_a_forked_process_is_what_a_spawned_one_is(root):
    broker = Proc("broker", ["broker"], env={"AUXIPC_RUNTIME_DIR": root}, log_dir=root)
    ready = broker.start()
    try:
        assert isinstance(broker.popen, zygote.ZygotePopen)
        assert f"pid {broker.pid}" in ready and root in ready            # its real pid; env passed
        assert cmdline(broker.pid) == [sys.executable, "-u", "-m", "auxipc", "broker"]
        assert os.getsid(broker.pid) == broker.pid                       # a session of its own
        assert broker.alive() and broker.popen.poll() is None
        assert os.path.exists(os.path.join(root, "bus.sock"))
    finally:
        code = broker.stop()
    assert code == 0 and gone(broker.pid)                                # SIGTERM: a clean exit
    assert not [n for n in os.listdir(root) if n.endswith(".sock")]


@needs_zygote
def test_crash_semantics_are_unchanged(root):
    h = Harness(root)
    try:
        h.broker()
        child = h.child("idpf_eth")
        os.kill(child.pid, signal.SIGKILL)
        assert child.popen.wait(10) == -signal.SIGKILL                    # as Popen reports it
        assert not child.alive()
        fail = Proc("bad", ["child", "--driver", "nosuch", "--runtime-dir", root], log_dir=root)
        with pytest.raises(Exception) as exc:
            fail.start()
        assert "exited with 1 before it was ready" in str(exc.value) and "nosuch" in str(exc.value)
        fail.stop()
    finally:
        assert h.close() == []


@needs_zygote
def test_cwd_and_pythonpath_reach_the_forked_process(root):
    pkg = os.path.join(root, "mydrv")
    os.makedirs(pkg)
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        f.write("from child.idpf_eth import IdpfEth\n\nclass Mine(IdpfEth):\n    name = 'mine'\n")
    h = Harness(root)
    try:
        h.broker()
        h.parent("ixd")
        p = h.start("child", "child", "--driver", "mydrv:Mine", cwd=root)       # found in its cwd
        assert isinstance(p.popen, zygote.ZygotePopen)
        assert "bound ixd.eth.0" in p.ready_line or h.until(
            lambda r: r.get("action") == "BIND" and r.get("dev") == "ixd.eth.0", timeout=10)
        assert h.ls()["devices"][0]["driver"] == "mine"
    finally:
        assert h.close() == []


@needs_zygote
def test_the_zygote_going_takes_its_children_with_it(root):
    z = zygote.Zygote()
    out_r, out_w = os.pipe()
    with open(os.devnull, "rb") as null, open(os.path.join(root, "b.log"), "ab") as log:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        popen = z.spawn(["broker", "--runtime-dir", root], env, None, null.fileno(), out_w, log.fileno())
    os.close(out_w)
    try:
        with os.fdopen(out_r, "rb") as out:
            assert b"ready" in out.readline()
        os.kill(z.popen.pid, signal.SIGKILL)          # as if the test runner were killed: PR_SET_PDEATHSIG
        z.popen.wait()
        _wait_gone(popen.pid)
        assert popen.wait(10) == -signal.SIGTERM
    finally:
        z.close()
        if process_start_time(popen.pid) is not None:
            os.kill(popen.pid, signal.SIGKILL)


def test_zygote_off_spawns(root):
    env = {**os.environ, "AUXIPC_ZYGOTE": "0"}
    r = subprocess.run([sys.executable, "-c", f"""
from auxipc.process.launch import Proc
p = Proc("b", ["broker", "--runtime-dir", {root!r}], log_dir={root!r})
p.start()
print(type(p.popen).__name__, p.stop())
"""], env=env, capture_output=True, text=True, timeout=30)
    assert r.stdout.split() == ["Popen", "0"], r.stderr


def test_another_checkout_on_the_path_is_never_forked(root):
    os.makedirs(os.path.join(root, "auxipc"))
    open(os.path.join(root, "auxipc", "__init__.py"), "w").close()
    assert not zygote.fits(["ls"], {"PYTHONPATH": root}, None)
    assert not zygote.fits(["ls"], {}, root)
    assert not zygote.fits(["x" * zygote.ARGV_ROOM], {}, None)
    assert zygote.fits(["ls"], {}, None) and not zygote.fits(["ls"], {"AUXIPC_ZYGOTE": "0"}, None)


def test_lazy_commands_list_their_own_short_help():
    from auxipc.cli.main import LAZY, main
    ctx = click.Context(main)
    for name, (_, short) in LAZY.items():
        cmd = main.get_command(ctx, name)
        assert cmd is not None and cmd.name == name
        assert cmd.get_short_help_str(limit=10_000) == short, name


def test_help_ls_and_wait_import_only_what_they_need():
    code = ("import sys\nfrom auxipc.cli.main import main\n"
            "try:\n    main(['--help'], prog_name='auxipc')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('zmq', 'msgpack', 'proto', 'importlib.metadata', 'auxipc.cli.up',"
            " 'auxipc.cli.fault') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr


@needs_zygote
def test_a_killed_launcher_leaves_nothing_behind(root):
    code = f"""
import threading
from auxipc.process.launch import Proc
from auxipc.process import zygote
def go():      # from a thread that ends: the zygote must outlive it, not the launcher
    p = Proc("b", ["broker", "--runtime-dir", {root!r}], log_dir={root!r})
    p.start()
    print(zygote.shared().popen.pid, p.pid, flush=True)
t = threading.Thread(target=go)
t.start()
t.join()
threading.Event().wait()
"""
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        zpid, bpid = map(int, launcher.stdout.readline().split())
        assert not gone(zpid) and not gone(bpid)        # the thread that started them has ended
        launcher.kill()
        launcher.wait()
        _wait_gone(zpid)
        _wait_gone(bpid)
    finally:
        launcher.kill()
        launcher.wait()
        launcher.stdout.close()
