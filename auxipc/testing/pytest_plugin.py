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
(``auxipc.testing.harness.Harness``): every process forked from a zygote that
imported auxipc once (``auxipc.process.zygote``); with ``AUXIPC_ZYGOTE=0`` spawned,
the broker through pytest-xprocess (``ensure(..., restart=True)``, one name per
pytest process; a broker left by an earlier pytest that was killed before its
teardown is stopped first); in a short runtime dir under /tmp, each waited for by
its ready line. A ``Watcher`` is
subscribed before any other process starts, so ``trace()`` holds every bus
notification, sync call and async event of the test. Teardown stops every
process (children and parents first, SIGCONT then SIGTERM, SIGKILL after a
grace period), then the broker, removes the runtime dir and fails the test if a
process or socket was left behind — also when the test failed or timed out.
"""

from __future__ import annotations

import pytest


def __getattr__(name: str):
    # AuxBus imports zmq and proto: loaded when a test uses it, not when pytest loads the plugin
    # (every pytest session of anyone who installed auxipc, and before a shadowing check).
    if name == "AuxBus":
        from auxipc.testing.auxbus import AuxBus
        return AuxBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@pytest.fixture
def auxbus(request):
    """A running auxipc broker in a private runtime dir, helpers to start parents and
    children, send events, inject faults and read the trace; everything is stopped
    and removed after the test. See ``auxipc.testing.auxbus.AuxBus`` and
    ``auxipc.testing.harness.Harness``."""
    from auxipc.shadowing import shadowed
    problem = shadowed()
    if problem:
        pytest.fail(f"auxbus: {problem}", pytrace=False)
    from auxipc.testing.auxbus import AuxBus
    # pytest-xprocess keeps its pid files in pytest's cache: without the cache provider
    # (``-p no:cacheprovider``) the broker is started like the test's other processes.
    xprocess = request.getfixturevalue("xprocess") if request.config.pluginmanager.hasplugin("cacheprovider") \
        else None
    bus = AuxBus(xprocess, request)
    try:
        bus.start()
        yield bus
    finally:
        problems = bus.close()
    assert not problems, "auxbus teardown: " + "; ".join(problems)
