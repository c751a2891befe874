"""The event catalog: its declarations, payload validation derived from them
(property-based round trips, one rejection per kind of bad input, word for word),
user-defined extensions, and the whole catalog travelling between real processes."""

from __future__ import annotations

import json
import types

import msgpack
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auxipc.cli.main import main
from proto.errno import AuxError, Errno
from proto.events import (
    CATALOG,
    Caps,
    Context,
    DcbConfig,
    Delivery,
    Direction,
    EnableQueues,
    Event,
    EventSpec,
    MacFilter,
    Qos,
    ResetWarn,
    Virtchnl,
    VlanFilter,
    decode_payload,
    encode_payload,
    negotiate,
)
from proto.extend import build_catalog
from proto.schema import Array, Bool, Bytes, Empty, Int, Map, Nested, Payload, Str
from proto.schema import Enum as EnumField
from tests.catalog_models import reply_for
from tests.skew import v1_0, v1_1

P2C, C2P, BOTH = Direction.TO_CHILD, Direction.TO_PARENT, Direction.BOTH
SYNC, ASYNC = Delivery.SYNC, Delivery.ASYNC
ATOMIC, SLEEP = Context.ATOMIC, Context.SLEEP


def rejects(fn, message: str) -> AuxError:
    with pytest.raises(AuxError) as info:
        fn()
    assert str(info.value) == message
    return info.value


# ---- the declarations ------------------------------------------------------------------------

# name: (code, direction, delivery, context, rtnl), as the kernel's aux drivers exchange them
EXPECTED = {
    "LINK_CHANGE": (1, P2C, ASYNC, ATOMIC, False),
    "RESET_WARN": (2, P2C, SYNC, SLEEP, False),
    "RESET_COMPLETE": (3, P2C, ASYNC, SLEEP, False),
    "BEFORE_MTU_CHANGE": (4, P2C, SYNC, SLEEP, False),
    "AFTER_MTU_CHANGE": (5, P2C, ASYNC, SLEEP, False),
    "BEFORE_TC_CHANGE": (6, P2C, SYNC, SLEEP, False),
    "AFTER_TC_CHANGE": (7, P2C, SYNC, SLEEP, False),
    "CRIT_ERR": (8, P2C, ASYNC, SLEEP, False),
    "CAPS_CHANGE": (9, P2C, SYNC, SLEEP, False),
    "PREPARE_DETACH": (10, P2C, SYNC, SLEEP, False),
    "FW_EVENT": (11, P2C, ASYNC, ATOMIC, False),
    "POST_INIT": (12, P2C, SYNC, SLEEP, False),
    "REQUEST_RESET": (64, C2P, SYNC, SLEEP, False),
    "QSET_ADD": (65, C2P, SYNC, SLEEP, False),
    "QSET_DEL": (66, C2P, SYNC, SLEEP, False),
    "MAC_FILTER": (67, C2P, ASYNC, ATOMIC, False),
    "VLAN_FILTER": (68, C2P, SYNC, SLEEP, True),
    "QUEUE_CONFIG": (69, C2P, SYNC, SLEEP, False),
    "ENABLE_QUEUES": (70, C2P, SYNC, SLEEP, False),
    "NETSHAPER_SET": (71, C2P, SYNC, SLEEP, False),
    "DCB_CONFIG": (72, C2P, SYNC, SLEEP, True),
    "ETHTOOL_OP": (73, C2P, SYNC, SLEEP, True),
    "VIRTCHNL_PASSTHROUGH": (74, C2P, SYNC, SLEEP, False),
    "REMOVE_NOTIFY": (75, C2P, ASYNC, SLEEP, False),
    "SET_MAC": (76, C2P, SYNC, SLEEP, True),
    "POST_CONFIG": (77, C2P, ASYNC, SLEEP, False),
}


def test_catalog_is_the_proposal():
    got = {s.name: (int(s.code), s.direction, s.delivery, s.context, s.rtnl) for s in CATALOG}
    assert got == EXPECTED
    assert {s.name for s in CATALOG} == {e.name for e in Event}
    for s in CATALOG:
        assert s.since == (1, 0) and s.doc
        assert (1 <= s.code <= 63) if s.direction is P2C else (64 <= s.code <= 127)


def test_replies_and_payloads():
    spec = {s.name: s for s in CATALOG}
    assert spec["QSET_ADD"].reply.fields.keys() == {"teid"}
    assert list(spec["DCB_CONFIG"].payload.fields) == ["ets", "pfc"]
    assert list(spec["AFTER_TC_CHANGE"].payload.fields) == ["num_tc", "up2tc", "rel_bw", "prio_type", "pfc_mode",
                                                             "dscp_map"]
    assert list(spec["NETSHAPER_SET"].payload.fields) == ["handle", "metric", "bw_min", "bw_max", "burst",
                                                           "priority", "weight"]
    for name in ("BEFORE_TC_CHANGE", "POST_INIT", "REMOVE_NOTIFY"):
        assert spec[name].payload is Empty


def test_builtins_pass_the_extension_rules():
    assert build_catalog().describe() == CATALOG.describe()


def test_examples_are_valid_for_every_struct():
    for cls in CATALOG.structs():
        ex = cls.example()
        assert cls.from_wire(ex.to_wire(), strict=True) == ex
    assert DcbConfig.example().ets.tc_tx_bw == (100, 0, 0, 0, 0, 0, 0, 0)


def test_negotiate():
    assert negotiate((1, 1), (1, 0)) == (1, 0)
    assert negotiate((1, 0), (1, 3)) == (1, 0)
    rejects(lambda: negotiate((2, 0), (1, 4)), "EPROTO: schema 2.0 and 1.4 differ in major version")


# ---- property-based round trips: one strategy builder for every declared field ----------------

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=24)


def _summing(item: Int, n: int, total: int):
    cuts = st.lists(st.integers(0, total), min_size=n - 1, max_size=n - 1).map(sorted)
    parts = cuts.map(lambda c: [b - a for a, b in zip([0, *c], [*c, total])])
    return parts.filter(lambda xs: all(item.min <= x <= item.max for x in xs))


def strategy(field):
    """Valid values of a declared field (its rules, and nothing else, decide)."""
    match field:
        case Bool():
            return st.booleans()
        case Int():
            return st.sampled_from(field.choices) if field.choices else st.integers(field.min, field.max)
        case Str():
            return TEXT.filter(lambda s: len(s) <= field.max_len)
        case Bytes():
            if field.size is not None:
                return st.binary(min_size=field.size, max_size=field.size)
            return st.binary(max_size=min(field.max_len, 64))
        case EnumField():
            return st.sampled_from(list(field.enum))
        case Nested():
            return payloads(field.struct)
        case Array():
            lo, hi = (field.length, field.length) if field.length is not None else (0, min(field.max_len, 8))
            if field.total is not None:
                return _summing(field.item, field.length, field.total)
            return st.lists(strategy(field.item), min_size=lo, max_size=hi)
        case Map():
            return st.dictionaries(st.text(max_size=8), st.integers(-(2**31), 2**31 - 1), max_size=4)
    raise TypeError(type(field).__name__)


def payloads(cls: type[Payload]):
    """Instances of a payload type: required fields always, optional ones sometimes (defaults)."""
    required = {n: strategy(f) for n, f in cls.fields.items() if f.required}
    optional = {n: strategy(f) for n, f in cls.fields.items() if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda d: cls(**d))


ALL_STRUCTS = CATALOG.structs() + [v1_1.Echo, v1_1.EchoReply, v1_1.Note]


@pytest.mark.parametrize("cls", ALL_STRUCTS, ids=lambda c: c.__name__)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(cls, data):
    p = data.draw(payloads(cls))
    wire = msgpack.unpackb(msgpack.packb(p.to_wire(), use_bin_type=True), raw=False)
    assert cls.from_wire(wire) == p                                   # the bus's form
    assert cls.from_wire(json.loads(json.dumps(p.to_json())), strict=True) == p   # the CLI's form
    for spec in CATALOG:
        if spec.payload is cls:
            assert decode_payload(spec, encode_payload(spec, p.to_json())) == p


@settings(max_examples=25, deadline=None)
@given(new=payloads(v1_1.Echo), old=payloads(v1_0.Echo))
def test_minor_skew_round_trip(new, old):
    """Appended fields: an older receiver ignores them, a newer one fills the default."""
    assert v1_0.Echo.from_wire(new.to_wire()).to_wire() == {"seq": new.seq, "text": new.text}
    assert v1_1.Echo.from_wire(old.to_wire()) == v1_1.Echo(seq=old.seq, text=old.text, lanes=1)


# ---- rejections: each kind of bad input, with its exact message --------------------------------

ETS = {"tc_tx_bw": [100, 0, 0, 0, 0, 0, 0, 0], "tc_rx_bw": [50, 50, 0, 0, 0, 0, 0, 0],
       "tc_tsa": ["ETS"] * 8, "prio_tc": [0] * 8}
QOS = {"num_tc": 1, "up2tc": [0] * 8, "rel_bw": [100, 0, 0, 0, 0, 0, 0, 0]}


def _with(base: dict, **changes) -> dict:
    return {**base, **changes}


def _item(values: list, i: int, value) -> list:
    values = list(values)
    values[i] = value
    return values


class Item(Payload):
    x = Int(0, 9)


class Items(Payload):
    items = Array(Nested(Item), max_len=4)


BAD = [
    ("wrong type", lambda: VlanFilter(vid="1"), "$.payload.vid: expected int, got str"),
    ("bool is not int", lambda: VlanFilter(vid=True), "$.payload.vid: expected int, got bool"),
    ("VLAN id range", lambda: VlanFilter(vid=4096), "$.payload.vid: 4096 out of range 0..4095"),
    ("negative", lambda: VlanFilter(vid=-1), "$.payload.vid: -1 out of range 0..4095"),
    ("TPID", lambda: VlanFilter(vid=1, proto=0x8101), "$.payload.proto: 0x8101 is not one of 0x8100, 0x88a8"),
    ("required", lambda: VlanFilter(), "$.payload.vid: required field missing"),
    ("unknown field", lambda: VlanFilter(vid=1, pcp=3),
     "$.payload.pcp: unknown field (fields: proto, vid, op)"),
    ("enum value", lambda: ResetWarn(reset_type=9),
     "$.payload.reset_type: 9 is not a valid ResetType (FUNC=1, DEV=2, GLOBAL=3, FLR=4)"),
    ("enum name", lambda: ResetWarn(reset_type="WARM"),
     "$.payload.reset_type: 'WARM' is not one of FUNC, DEV, GLOBAL, FLR"),
    ("enum type", lambda: ResetWarn(reset_type=1.0),
     "$.payload.reset_type: expected ResetType (int or name), got float"),
    ("bool", lambda: EnableQueues(enable=1), "$.payload.enable: expected bool, got int"),
    ("u64", lambda: Caps(rss_caps=2**64), "$.payload.rss_caps: 18446744073709551616 out of range 0..18446744073709551615"),
    ("MAC size", lambda: MacFilter(addr=b"\x02\x00"), "$.payload.addr: expected 6 bytes, got 2"),
    ("MAC string", lambda: MacFilter(addr="02:00:00:00:00"),
     "$.payload.addr: '02:00:00:00:00' is not a MAC address (aa:bb:cc:dd:ee:ff)"),
    ("bytes type", lambda: MacFilter(addr=7), "$.payload.addr: expected bytes, got int"),
    ("bytes bound", lambda: Virtchnl(op=1, buf=b"x" * 4097), "$.payload.buf: length 4097 exceeds 4096"),
    ("str bound", lambda: v1_0.Echo(seq=1, text="x" * 65), "$.payload.text: length 65 exceeds 64"),
    ("array type", lambda: Qos(**_with(QOS, up2tc=5)), "$.payload.up2tc: expected array, got int"),
    ("8 entries", lambda: Qos(**_with(QOS, up2tc=[0] * 7)), "$.payload.up2tc: expected 8 items, got 7"),
    ("array item", lambda: Qos(**_with(QOS, up2tc=_item(QOS["up2tc"], 5, 8))),
     "$.payload.up2tc[5]: 8 out of range 0..7"),
    ("shares sum", lambda: Qos(**_with(QOS, rel_bw=[50, 40, 0, 0, 0, 0, 0, 0])),
     "$.payload.rel_bw: items sum to 90, must sum to 100"),
    ("nested item", lambda: DcbConfig(ets=_with(ETS, tc_tx_bw=_item(ETS["tc_tx_bw"], 3, 101))),
     "$.payload.ets.tc_tx_bw[3]: 101 out of range 0..100"),
    ("nested sum", lambda: DcbConfig(ets=_with(ETS, tc_rx_bw=[50, 49, 0, 0, 0, 0, 0, 0])),
     "$.payload.ets.tc_rx_bw: items sum to 99, must sum to 100"),
    ("nested enum item", lambda: DcbConfig(ets=_with(ETS, tc_tsa=_item(ETS["tc_tsa"], 2, "FAST"))),
     "$.payload.ets.tc_tsa[2]: 'FAST' is not one of STRICT, CB_SHAPER, ETS, VENDOR"),
    ("nested required", lambda: DcbConfig(ets={k: v for k, v in ETS.items() if k != "prio_tc"}),
     "$.payload.ets.prio_tc: required field missing"),
    ("nested unknown", lambda: DcbConfig(ets=_with(ETS, bogus=1)),
     "$.payload.ets.bogus: unknown field (fields: willing, tc_tx_bw, tc_rx_bw, tc_tsa, prio_tc)"),
    ("nested type", lambda: DcbConfig(ets=5), "$.payload.ets: expected map, got int"),
    ("nested optional", lambda: DcbConfig(ets=ETS, pfc={"pfc_en": 256}),
     "$.payload.pfc.pfc_en: 256 out of range 0..255"),
    ("struct in struct", lambda: Caps(q_info={"max_rxq": -1}), "$.payload.q_info.max_rxq: -1 out of range 0..65535"),
    ("array of structs", lambda: Items(items=[{"x": 1}, {"x": 10}]), "$.payload.items[1].x: 10 out of range 0..9"),
    ("array bound", lambda: Items(items=[{"x": 1}] * 5), "$.payload.items: 5 items exceed 4"),
    ("not a map", lambda: VlanFilter.from_wire([1]), "$.payload: expected map, got array"),
    ("reply", lambda: encode_payload(CATALOG.lookup("QSET_ADD"), {"teid": -1}, reply=True),
     "$.reply.teid: -1 out of range 0..4294967295"),
    ("wrong payload type", lambda: encode_payload(CATALOG.lookup("QSET_ADD"), VlanFilter(vid=1)),
     "$.payload: QSET_ADD takes QsetParams, got VlanFilter"),
]


@pytest.mark.parametrize("fn, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_rejection(fn, message):
    err = rejects(fn, f"EINVAL: {message}")
    assert err.errno == Errno.EINVAL


def test_decoded_wire_is_checked_the_same_way():
    spec = CATALOG.lookup("DCB_CONFIG")
    bad = {"ets": _with(ETS, tc_tx_bw=_item(ETS["tc_tx_bw"], 3, 101))}
    rejects(lambda: decode_payload(spec, bad), "EINVAL: $.payload.ets.tc_tx_bw[3]: 101 out of range 0..100")
    # receiving is lenient about fields it does not know (a newer peer's), sending is not
    assert decode_payload(spec, {"ets": _with(ETS, later=1)}).ets.tc_rx_bw == (50, 50, 0, 0, 0, 0, 0, 0)


# ---- user-defined events: the extension rules ---------------------------------------------------

class Thing(Payload):
    """A user payload."""
    a = Int(0, 9)


class ThingLater(Payload):
    a = Int(0, 9)
    b = Int(0, 9, since=(1, 1))


class ThingOutOfOrder(Payload):
    a = Int(0, 9, default=0, since=(1, 1))
    b = Int(0, 9, default=0)


def mod(*events, version=None, name="m"):
    m = types.SimpleNamespace(__name__=name, EVENTS=tuple(events))
    if version is not None:
        m.SCHEMA_VERSION = version
    return m


def ev(code=0x1000, name="THING", payload=Thing, **kw):
    return EventSpec(code, name, P2C, SYNC, payload, **kw)


def test_user_events_extend_the_catalog():
    cat = build_catalog([mod(ev(), ev(0x1001, "LATER", Empty, since=(1, 1)), version=(1, 1))])
    assert cat.version == (1, 1) and len(cat) == len(CATALOG) + 2
    assert cat.lookup("thing").payload is Thing and cat.lookup(0x1001).since == (1, 1)
    assert "Thing" in cat.describe()["structs"]


@pytest.mark.parametrize("schemas, message", [
    ([mod(ev(0x50))], "EINVAL: schema 'm': event THING: code 0x50 is outside the user range 0x1000..0x7fffffff"),
    ([mod(ev(), ev(name="OTHER"))], "EEXIST: schema 'm': event OTHER (4096) declared twice"),
    ([mod(ev(name="SET_MAC"))], "EEXIST: schema 'm': event SET_MAC (4096) declared twice"),
    ([mod(ev(name="my-event"))], "EINVAL: schema 'm': event name 'my-event' is not [A-Z][A-Z0-9_]*"),
    ([mod(ev(since=(1, 2)), version=(1, 1))], "EINVAL: schema 'm': event THING appeared in 1.2, after the catalog's 1.1"),
    ([mod(ev(payload=ThingLater), version=(1, 1))],
     "EINVAL: schema 'm': event THING: ThingLater.b appeared in 1.1, after the event (1.0), so it needs a default"),
    ([mod(ev(payload=ThingOutOfOrder), version=(1, 1))],
     "EINVAL: schema 'm': event THING: ThingOutOfOrder.b (since 1.0) follows a field of 1.1: fields are only appended"),
    ([mod(ev(payload=ThingLater))], "EINVAL: schema 'm': event THING: ThingLater.b appeared in 1.1, after the catalog's 1.0"),
    ([mod(ev(payload=dict))], "EINVAL: schema 'm': event THING: payload <class 'dict'> is not a Payload subclass"),
    ([types.SimpleNamespace(__name__="m")], "EINVAL: schema 'm': EVENTS must be a tuple of EventSpec, got nothing"),
    ([mod("THING")], "EINVAL: schema 'm': EVENTS holds str, not EventSpec"),
    ([mod(version="1.1")], "EINVAL: schema 'm': SCHEMA_VERSION must be (major, minor), got '1.1'"),
    ([mod(ev(0x1005, payload=type("Echo", (Payload,), {"x": Int(0, 1)}))), mod(*v1_0.EVENTS, name="n")],
     "EEXIST: event THING: struct name Echo already names tests.skew.v1_0.Echo"),
])
def test_user_event_rules(schemas, message):
    rejects(lambda: build_catalog(schemas), message)


def test_schema_option_loads_modules():
    r = CliRunner().invoke(main, ["events", "--json", "--schema", "tests.skew.v1_1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["schema"] == "1.1"
    assert [e["name"] for e in out["events"]][-3:] == ["SKEW_ECHO", "SKEW_NEW_CALL", "SKEW_NEW_NOTE"]
    r = CliRunner().invoke(main, ["events", "--schema", "tests.nonexistent"])
    assert r.exit_code == 2 and "cannot load schema module 'tests.nonexistent'" in r.output


# ---- the whole catalog between real processes ------------------------------------------------------

@pytest.mark.timeout(60)
def test_every_event_travels_between_processes(bus):
    """Every event of the catalog, with a sample payload derived from its declaration, sent
    by the side that may send it, through its runtime and the broker, to a generic handler
    in the other process: decoded there as sent, answered with the reply it built."""
    parent = bus.parent("tests.catalog_models:AllParent")
    child = bus.child("tests.catalog_models:AllDriver")
    child.wait_record("probe", dev="cat.dev.0")
    parent.wait_record("bind", dev="cat.dev.0")

    for spec in CATALOG:
        example = spec.payload.example()
        side, receiver = ("parent", child) if spec.direction.allows("parent") else ("child", parent)
        out = bus.client.send_event("cat.dev.0", spec.name, side, example.to_json(), 5.0)
        assert out["errno"] == 0, (spec.name, out)
        rec = receiver.wait_record("event", event=spec.name, timeout=5.0)
        assert rec["payload"] == example.to_json(), spec.name
        assert rec["role"] == ("child" if side == "parent" else "parent")
        if spec.sync and spec.reply.fields:
            assert out["reply"] == reply_for(spec, example).to_json(), spec.name
        else:
            assert out["reply"] in (None, {}), spec.name
    assert len(child.records("event")) + len(parent.records("event")) == len(CATALOG)

    r = CliRunner().invoke(main, ["events", "cat.dev.0", "--json", "--runtime-dir", str(bus.root)])
    assert r.exit_code == 0, r.output
    contract = json.loads(r.output)
    assert contract["schema"] == {"parent": "1.0", "child": "1.0", "negotiated": "1.0"}
    rows = {e["event"]: e for e in contract["events"]}
    assert set(rows) == set(EXPECTED) and all(e["deliverable"] for e in rows.values())
    assert rows["LINK_CHANGE"]["child"] and not rows["LINK_CHANGE"]["parent"]
    assert rows["DCB_CONFIG"]["parent"] and rows["DCB_CONFIG"]["rtnl"] and rows["MAC_FILTER"]["context"] == "atomic"


def test_entry_point_schemas_are_loaded(monkeypatch):
    from importlib.metadata import EntryPoint

    import auxipc.schemas as schemas
    eps = [EntryPoint(name="skew", value="tests.skew.v1_1", group=schemas.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(schemas, "entry_points", lambda group: eps if group == schemas.ENTRY_POINT_GROUP else [])
    cat = schemas.load_catalog()
    assert cat.version == (1, 1) and cat.lookup("SKEW_NEW_NOTE").code == 0x1002
    eps[:] = [EntryPoint(name="broken", value="tests.nonexistent", group=schemas.ENTRY_POINT_GROUP)]
    rejects(schemas.load_catalog, "ENOENT: entry point broken = tests.nonexistent (auxipc.schemas): "
                                  "ModuleNotFoundError: No module named 'tests.nonexistent'")
