"""Version skew across real processes: peers one minor apart interoperate (unknown
events -EOPNOTSUPP, appended fields defaulted or ignored), peers of different majors
are never bound (BIND_REFUSED, told to both sides, shown by ``ls`` and ``events``).

One broker for the module, started with the newest schema (``tests.skew.v1_1``);
each test starts its own parent and child (tests/catalog_models.py) under their
own names, with the schema module each should speak in ``$AUXIPC_SCHEMA``.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from auxipc.cli.main import main
from auxipc.schemas import load_catalog
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

V10, V11, V20 = "tests.skew.v1_0", "tests.skew.v1_1", "tests.skew.v2_0"
CAT = {V10: load_catalog([V10]), V11: load_catalog([V11])}
MODEL, DRIVER = "tests.catalog_models:AllParent", "tests.catalog_models:AllDriver"


@pytest.fixture(scope="module")
def skew_bus(make_module_bus):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUXIPC_SCHEMA", V11)      # the broker knows the newest contract
        return make_module_bus()


def start_parent(bus, mod: str, schema: str):
    return bus.parent(MODEL, AXT_MOD=mod, AUXIPC_SCHEMA=schema)


def start_child(bus, mod: str, schema: str, drv: str):
    return bus.child(DRIVER, AXT_DRV=drv, AXT_IDS=f"{mod}.dev", AUXIPC_SCHEMA=schema)


def send(bus, dev: str, event: str, side: str, payload: dict, schema: str) -> dict:
    """Send through ``side``'s runtime; the reply is read with the sender's catalog."""
    return bus.client.send_event(dev, event, side, payload, 5.0, catalog=CAT[schema])


def cli(bus, *args: str):
    r = CliRunner().invoke(main, [*args, "--runtime-dir", str(bus.root)])
    assert r.exit_code == 0, r.output
    return r.output


def contract(bus, dev: str) -> dict:
    return json.loads(cli(bus, "events", dev, "--json"))


def fails(out: dict, error: str, message: str) -> None:
    assert (out["error"], out["message"]) == (error, message), out


def test_older_child_newer_parent(skew_bus):
    bus, dev = skew_bus, "newp.dev.0"
    parent = start_parent(bus, "newp", V11)
    child = start_child(bus, "newp", V10, "olddrv")
    assert child.wait_record("probe", dev=dev)["parent_schema"] == "1.1"
    assert parent.wait_record("bind", dev=dev)["child_schema"] == "1.0"

    c = contract(bus, dev)
    assert c["schema"] == {"parent": "1.1", "child": "1.0", "negotiated": "1.0"}
    rows = {e["event"]: e for e in c["events"]}
    assert (rows["SKEW_ECHO"]["parent"], rows["SKEW_ECHO"]["child"], rows["SKEW_ECHO"]["deliverable"]) == (True,) * 3
    assert (rows["SKEW_NEW_CALL"]["parent"], rows["SKEW_NEW_CALL"]["child"]) == (True, False)
    assert not rows["SKEW_NEW_CALL"]["deliverable"] and rows["SKEW_NEW_CALL"]["since"] == "1.1"

    # newer -> older: the appended field is ignored; the newer side defaults it in the reply
    out = send(bus, dev, "SKEW_ECHO", "parent", {"seq": 7, "text": "hi", "lanes": 4}, V11)
    assert out["errno"] == 0 and out["reply"] == {"seq": 7, "text": "hi", "lanes": 1}
    rec = child.wait_record("event", event="SKEW_ECHO")
    assert (rec["payload"], rec["schema"]) == ({"seq": 7, "text": "hi"}, "1.0")

    # older -> newer: the absent field takes its default
    out = send(bus, dev, "SKEW_ECHO", "child", {"seq": 8, "text": "yo"}, V10)
    assert out["errno"] == 0 and out["reply"] == {"seq": 8, "text": "yo"}
    rec = parent.wait_record("event", event="SKEW_ECHO")
    assert (rec["payload"], rec["schema"]) == ({"seq": 8, "text": "yo", "lanes": 1}, "1.1")
    fails(send(bus, dev, "SKEW_ECHO", "child", {"seq": 9, "lanes": 2}, V10),
          "EINVAL", "$.payload.lanes: unknown field (fields: seq, text)")

    # events the older side does not know are -EOPNOTSUPP, whichever side is asked
    fails(send(bus, dev, "SKEW_NEW_CALL", "parent", {}, V11),
          "EOPNOTSUPP", "driver olddrv has no handler for SKEW_NEW_CALL")
    fails(send(bus, dev, "SKEW_NEW_NOTE", "parent", {"level": 3}, V11),
          "EOPNOTSUPP", "driver olddrv has no handler for SKEW_NEW_NOTE")
    fails(send(bus, dev, "SKEW_NEW_CALL", "child", {}, V11), "EOPNOTSUPP", "event 4097 is not in schema 1.0")

    # the shared contract still flows
    assert send(bus, dev, "LINK_CHANGE", "parent", {"up": True, "speed_mbps": 25000}, V11)["errno"] == 0
    assert child.wait_record("event", event="LINK_CHANGE")["payload"]["speed_mbps"] == 25000
    assert not child.records("event", event="SKEW_NEW_NOTE")


def test_older_parent_newer_child(skew_bus):
    bus, dev = skew_bus, "oldp.dev.0"
    parent = start_parent(bus, "oldp", V10)
    child = start_child(bus, "oldp", V11, "newdrv")
    assert child.wait_record("probe", dev=dev)["parent_schema"] == "1.0"
    assert parent.wait_record("bind", dev=dev)["child_schema"] == "1.1"
    assert contract(bus, dev)["schema"] == {"parent": "1.0", "child": "1.1", "negotiated": "1.0"}

    out = send(bus, dev, "SKEW_ECHO", "child", {"seq": 1, "text": "up", "lanes": 8}, V11)
    assert out["errno"] == 0 and out["reply"] == {"seq": 1, "text": "up", "lanes": 1}
    assert parent.wait_record("event", event="SKEW_ECHO")["payload"] == {"seq": 1, "text": "up"}

    out = send(bus, dev, "SKEW_ECHO", "parent", {"seq": 2}, V10)
    assert out["errno"] == 0 and out["reply"] == {"seq": 2, "text": ""}
    assert child.wait_record("event", event="SKEW_ECHO")["payload"] == {"seq": 2, "text": "", "lanes": 1}

    fails(send(bus, dev, "SKEW_NEW_CALL", "child", {}, V11),
          "EOPNOTSUPP", "parent oldp has no handler for SKEW_NEW_CALL")
    fails(send(bus, dev, "SKEW_NEW_NOTE", "child", {"level": 1}, V11),
          "EOPNOTSUPP", "parent does not handle SKEW_NEW_NOTE")
    fails(send(bus, dev, "SKEW_NEW_CALL", "parent", {}, V11), "EOPNOTSUPP", "event 4097 is not in schema 1.0")
    assert send(bus, dev, "POST_CONFIG", "child", {"mtu": 9000}, V11)["errno"] == 0
    assert parent.wait_record("event", event="POST_CONFIG")["payload"]["mtu"] == 9000


def _refusal(bus, parent, child, mod: str, drv: str) -> None:
    dev = f"{mod}.dev.0"
    ue = bus.wait_uevent("BIND_REFUSED", dev)
    why = ue["detail"]["reason"]
    assert why.startswith(f"bind refused: driver {drv} (child {drv}[{child.pid}]#")
    assert why.endswith(f"speaks schema 1.0, parent {mod} of {dev} speaks 2.0: major versions differ")
    assert (ue["detail"]["parent_schema"], ue["detail"]["driver_schema"]) == ("2.0", "1.0")

    d = bus.device(dev)
    assert (d["bind"], d["driver"], d["last_error"]) == ("unbound", None, why)
    assert d["schema"] == {"parent": "2.0", "child": None, "negotiated": None}
    assert {bus.peer(p.pid)["schema"] for p in (parent, child)} == {"2.0", "1.0"}   # both registered
    rec = parent.wait_record("unbind", dev=dev)                                    # the parent is told
    assert rec["reason"] == rec["last_error"] == why
    wait_until(lambda: why in child.output(), 5, "the child's warning")            # the child is told
    assert not child.records("probe")
    assert f"last error: {why}" in cli(bus, "ls")
    text = cli(bus, "events", dev)
    assert text.startswith(f"{dev}: parent {mod}[") and "(schema 2.0), no driver bound\n" in text
    assert f"\nlast error: {why}\n" in text


def test_major_mismatch_refused_parent_first(skew_bus):
    parent = start_parent(skew_bus, "majp", V20)
    child = start_child(skew_bus, "majp", V10, "majdrv")
    _refusal(skew_bus, parent, child, "majp", "majdrv")


def test_major_mismatch_refused_child_first(skew_bus):
    child = start_child(skew_bus, "majq", V10, "majqdrv")
    parent = start_parent(skew_bus, "majq", V20)
    _refusal(skew_bus, parent, child, "majq", "majqdrv")
