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
grace period), asks the broker for the contract bugs it saw, stops it, removes
the runtime dir and fails the test (one ``pytest.fail`` listing everything,
each bug at the ``file:line`` of the user's code) on a bug its
``@pytest.mark.auxbus_allow(KIND, ...)`` does not allow
(``auxipc.testing.contract``), or if a process or socket was left behind —
also when the test failed or timed out. A failed test's report gets each
process's log and the test's trace; ``--auxbus-keep`` keeps the runtime dir
and the logs and prints where.
"""

from __future__ import annotations

import pytest

from auxipc.testing.contract import MARKER, MARKER_DOC, UnknownKind, allowed, failure


def __getattr__(name: str):
    # AuxBus imports zmq and proto: loaded when a test uses it, not when pytest loads the plugin
    # (every pytest session of anyone who installed auxipc, and before a shadowing check).
    if name == "AuxBus":
        from auxipc.testing.auxbus import AuxBus
        return AuxBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


KEPT = pytest.StashKey[list]()          # (nodeid, runtime dir, log dir) kept by --auxbus-keep
BUS = pytest.StashKey[object]()         # the test's AuxBus, for the report hook


def pytest_addoption(parser):
    parser.getgroup("auxbus").addoption(
        "--auxbus-keep", action="store_true", default=False,
        help="auxbus: keep each test's runtime dir and process logs (their paths are printed at the end)")


def pytest_configure(config):
    config.addinivalue_line("markers", MARKER_DOC)
    config.stash[KEPT] = []


def pytest_collection_modifyitems(config, items):
    for item in items:
        _allowed(item)      # an unknown kind is a usage error before any test runs


def _allowed(item) -> set[str]:
    try:
        return allowed(name for mark in item.iter_markers(MARKER) for name in mark.args)
    except UnknownKind as exc:
        raise pytest.UsageError(f"{item.nodeid}: {exc}") from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test, or a teardown that found contract bugs: each process's log and the
    test's trace go into the report (shown under the failure)."""
    report = yield
    bus = item.stash.get(BUS, None)
    if bus is not None and report.failed:
        if call.when == "call":
            try:
                sections = bus.report_sections()
            except Exception as exc:   # noqa: BLE001 — a report never fails on its extras
                sections = [("auxbus", f"could not collect the logs and trace: {exc}")]
        else:
            sections = bus.sections if call.when == "teardown" else []
        report.sections.extend(sections)
    if call.when == "teardown" and BUS in item.stash:
        del item.stash[BUS]
    return report


def pytest_terminal_summary(terminalreporter, config):
    kept = config.stash.get(KEPT, [])
    if kept:
        terminalreporter.section("auxbus: kept runtime dirs (--auxbus-keep)")
        for nodeid, root, logs in kept:
            terminalreporter.write_line(f"{nodeid}: runtime dir {root}, process logs {logs}")


@pytest.fixture
def auxbus(request):
    """A running auxipc broker in a private runtime dir, helpers to start parents and
    children, send events, inject faults and read the trace; everything is stopped
    and removed after the test, which fails if the bus saw a contract bug (a sleep in
    atomic context, a handler exception, a lockdep report, ...: ``auxipc.testing.contract``)
    that its ``auxbus_allow`` marker does not allow. See ``auxipc.testing.auxbus.AuxBus``
    and ``auxipc.testing.harness.Harness``."""
    from auxipc.shadowing import shadowed
    problem = shadowed()
    if problem:
        pytest.fail(f"auxbus: {problem}", pytrace=False)
    from auxipc.testing.auxbus import AuxBus
    # pytest-xprocess keeps its pid files in pytest's cache: without the cache provider
    # (``-p no:cacheprovider``) the broker is started like the test's other processes.
    xprocess = request.getfixturevalue("xprocess") if request.config.pluginmanager.hasplugin("cacheprovider") \
        else None
    keep = request.config.getoption("auxbus_keep")
    bus = AuxBus(xprocess, request, allowed=_allowed(request.node), keep=keep)
    request.node.stash[BUS] = bus
    try:
        bus.start()
        yield bus
    finally:
        problems = bus.close()
        if keep:
            request.config.stash[KEPT].append((request.node.nodeid, bus.root, bus.logs))
    if problems or bus.contract_bugs:
        pytest.fail(failure(bus.contract_bugs, problems), pytrace=False)
