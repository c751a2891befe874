"""The ``auxbus`` pytest fixture: a private auxipc bus per test, across real processes.

Installed with auxipc (entry point ``pytest11``); needs pytest-xprocess
(``pip install 'auxipc[pytest]'``). ::

    def test_my_driver_binds(auxbus):
        auxbus.parent("ixd")                     # or "mypkg.models:MyParent"
        auxbus.child("mypkg.drivers:MyEth")      # importable from the test's dir or rootdir
        auxbus.wait("bound", "ixd.eth.0")
        out = auxbus.send("ixd.eth.0", "SET_MAC", {"addr": "02:00:00:00:00:01"})
        assert out["errno"] == 0 and out["reply"]["filter_id"] == 0
        auxbus.kill("idpf_eth")                  # SIGKILL: fault injection
        auxbus.expect_uevent("UNBIND", dev="ixd.eth.0")

The bus is ``auxipc.testing.auxbus.AuxBus``: the project's one bus harness
(``auxipc.testing.harness.Harness``) whose broker is started through pytest-xprocess (``ensure(..., restart=True)``,
one name per pytest process; a broker left by an earlier pytest that was killed
before its teardown is stopped first) in a short runtime dir under /tmp, waited
for by its ready line and a real ping. A ``Watcher`` is
subscribed before any other process starts, so ``trace()`` holds every bus
notification, sync call and async event of the test. Teardown stops every
process (children and parents first, SIGCONT then SIGTERM, SIGKILL after a
grace period), then the broker, removes the runtime dir and fails the test if a
process or socket was left behind — also when the test failed or timed out.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from auxipc.procfs import cmdline, gone

START_TIMEOUT = 15.0
STOP_GRACE = 3.0
BROKER_PREFIX = "auxipc-broker-"


def _broker_name() -> str:
    """One xprocess name per pytest process: concurrent sessions (xdist workers, two
    terminals in one checkout) never restart each other's broker."""
    return f"{BROKER_PREFIX}{os.getpid()}"


def _broker_starter(root: str, env: dict):
    from xprocess import ProcessStarter

    from auxipc.observe.client import Client
    from proto.errno import AuxError

    def ping() -> bool:
        try:
            with Client(root, timeout=1.0) as c:
                return c.query("ping")["pid"] > 0
        except AuxError:
            return False

    class BrokerStarter(ProcessStarter):
        args = [sys.executable, "-u", "-m", "auxipc", "broker", "--runtime-dir", root]
        pattern = r"auxipc broker ready"
        timeout = START_TIMEOUT
        max_read_lines = 500
        terminate_on_interrupt = True

        def startup_check(self):
            return ping()

        def get_lines(self, log_file):
            return ready_lines(log_file, self.control_dir, time.monotonic() + START_TIMEOUT,
                               lambda: f"auxipc broker exited before it was ready "
                                       f"(log: {self.control_dir}/xprocess.log)",
                               lambda: f"auxipc broker not ready within {START_TIMEOUT} s")

    BrokerStarter.env = env
    return BrokerStarter


def ready_lines(log_file, control_dir, deadline: float, exited: Callable[[], str], late: Callable[[], str]):
    """The lines of an xprocess log as they come, for a starter's ``get_lines``.
    xprocess's own reader polls every 0.1 s and, if the process dies before its ready
    line, waits out its whole timeout; this polls every 10 ms and raises RuntimeError
    (``exited()``) as soon as the process is gone, TimeoutError (``late()``) at ``deadline``."""
    pidfile = Path(str(control_dir)) / "xprocess.PID"
    while True:
        line = log_file.readline()
        if not line:
            if pidfile.exists() and gone(int(pidfile.read_text())):
                line = log_file.readline()
                if not line:
                    raise RuntimeError(exited())
            else:
                time.sleep(0.01)
        if time.monotonic() > deadline:
            raise TimeoutError(late())
        yield line


def _is_broker(pid: int, root: str | None = None) -> bool:
    """Whether ``pid`` is an auxipc broker (serving ``root``, when given: a pid reused
    by somebody else's broker is not ours to stop)."""
    argv = cmdline(pid)
    return "auxipc" in argv and "broker" in argv and (root is None or root in argv)


def _reap_stale(xprocess) -> None:
    """Brokers left by an earlier pytest that was killed before its teardown: stop them
    (only if the pid still is an auxipc broker) and forget them."""
    for d in Path(str(xprocess.rootdir)).glob(BROKER_PREFIX + "*"):
        owner = d.name[len(BROKER_PREFIX):]
        if not owner.isdigit() or int(owner) == os.getpid() or not gone(int(owner)):
            continue
        info = xprocess.getinfo(d.name)
        try:
            root = (d / "runtime_dir").read_text().strip()
        except OSError:
            root = None
        if info.pid and root and _is_broker(info.pid, root):
            info.terminate(timeout=STOP_GRACE)
        shutil.rmtree(d, ignore_errors=True)


def __getattr__(name: str):
    # AuxBus imports zmq and proto: loaded when a test uses it, not when pytest loads the plugin
    # (every pytest session of anyone who installed auxipc, and before a shadowing check).
    if name == "AuxBus":
        from auxipc.testing.auxbus import AuxBus
        return AuxBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@pytest.fixture
def auxbus(xprocess, request):
    """A running auxipc broker in a private runtime dir, helpers to start parents and
    children, send events, inject faults and read the trace; everything is stopped
    and removed after the test. See ``auxipc.testing.pytest_plugin.AuxBus`` and
    ``auxipc.testing.harness.Harness``."""
    from auxipc.shadowing import shadowed
    problem = shadowed()
    if problem:
        pytest.fail(f"auxbus: {problem}", pytrace=False)
    from auxipc.testing.auxbus import AuxBus
    bus = AuxBus(xprocess, request)
    try:
        bus.start()
        yield bus
    finally:
        problems = bus.close()
    assert not problems, "auxbus teardown: " + "; ".join(problems)
