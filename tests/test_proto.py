"""proto/: schema validation, envelope codec, errno table, catalog."""

import pytest

from proto import envelope as E
from proto.errno import ERRNO_TABLE, AuxError, Errno, errno_name, strerror
from proto.events import (
    CATALOG,
    Catalog,
    Direction,
    Duplex,
    Event,
    EventSpec,
    FwEvent,
    LinkChange,
    ResetType,
    SetMac,
    SetMacReply,
    decode_payload,
    encode_payload,
)


def rejects(fn, message):
    with pytest.raises(AuxError) as info:
        fn()
    assert str(info.value) == message
    return info.value


# ---- schema -------------------------------------------------------------------

def test_payload_defaults_and_wire_form():
    p = LinkChange(up=True)
    assert p.to_wire() == {"up": True, "speed_mbps": -1, "duplex": 0, "autoneg": False}
    assert LinkChange.from_wire(p.to_wire()) == p
    assert p.duplex is Duplex.UNKNOWN


def test_field_named_in_type_error():
    rejects(lambda: LinkChange.from_wire({"up": True, "speed_mbps": "x"}),
            "EINVAL: $.payload.speed_mbps: expected int, got str")


def test_bool_is_not_an_int():
    rejects(lambda: LinkChange(up=True, speed_mbps=True), "EINVAL: $.payload.speed_mbps: expected int, got bool")


def test_range_rule():
    rejects(lambda: LinkChange(up=True, speed_mbps=-2), "EINVAL: $.payload.speed_mbps: -2 out of range -1..2147483647")


def test_required_field():
    rejects(lambda: LinkChange.from_wire({}), "EINVAL: $.payload.up: required field missing")


def test_enum_by_name_and_value():
    assert LinkChange(up=True, duplex="full").duplex is Duplex.FULL
    assert LinkChange(up=True, duplex=2).duplex is Duplex.FULL
    rejects(lambda: LinkChange(up=True, duplex=7),
            "EINVAL: $.payload.duplex: 7 is not a valid Duplex (UNKNOWN=0, HALF=1, FULL=2)")
    rejects(lambda: LinkChange(up=True, duplex="fast"),
            "EINVAL: $.payload.duplex: 'fast' is not one of UNKNOWN, HALF, FULL")


def test_mac_bytes():
    assert SetMac(addr="02:00:00:00:00:01").addr == b"\x02\0\0\0\0\x01"
    assert SetMac(addr=[2, 0, 0, 0, 0, 1]).addr == b"\x02\0\0\0\0\x01"
    rejects(lambda: SetMac(addr=b"\x01\x02"), "EINVAL: $.payload.addr: expected 6 bytes, got 2")
    rejects(lambda: SetMac(addr="zz"), "EINVAL: $.payload.addr: 'zz' is not a MAC address (aa:bb:cc:dd:ee:ff)")


def test_unknown_field_strict_on_send_lenient_on_receive():
    rejects(lambda: LinkChange(up=True, sped=1),
            "EINVAL: $.payload.sped: unknown field (fields: up, speed_mbps, duplex, autoneg)")
    # A newer peer's appended field is ignored by an older receiver.
    assert LinkChange.from_wire({"up": False, "added_in_1_1": 3}) == LinkChange(up=False)


def test_payload_not_a_map():
    rejects(lambda: LinkChange.from_wire([1, 2]), "EINVAL: $.payload: expected map, got array")


def test_immutable():
    p = LinkChange(up=True)
    with pytest.raises(AttributeError):
        p.up = False


def test_json_form():
    assert SetMacReply(addr=b"\x02\0\0\0\0\x01", filter_id=3).to_json() == {"addr": "02:00:00:00:00:01",
                                                                           "filter_id": 3}
    assert FwEvent(kind="HEALTH").to_json() == {"kind": "HEALTH", "state": 0, "data": []}


# ---- catalog -------------------------------------------------------------------

def test_catalog_lookup():
    assert CATALOG.lookup("link_change").code == Event.LINK_CHANGE
    assert CATALOG.lookup(Event.SET_MAC).reply is SetMacReply
    assert CATALOG.lookup("76").name == "SET_MAC"
    rejects(lambda: CATALOG.lookup("NOPE"), "EOPNOTSUPP: event 'NOPE' is not in schema 1.0")


def test_catalog_required_events():
    spec = {s.name: s for s in CATALOG}
    assert spec["LINK_CHANGE"].direction is Direction.TO_CHILD and not spec["LINK_CHANGE"].sync
    assert spec["FW_EVENT"].direction is Direction.TO_CHILD and not spec["FW_EVENT"].sync
    assert spec["RESET_WARN"].sync and spec["PREPARE_DETACH"].sync
    assert spec["REQUEST_RESET"].direction is Direction.TO_PARENT and spec["REQUEST_RESET"].sync
    assert spec["SET_MAC"].sync and spec["SET_MAC"].reply is SetMacReply
    assert spec["POST_CONFIG"].direction is Direction.TO_PARENT and not spec["POST_CONFIG"].sync


def test_catalog_duplicate_declaration():
    cat = Catalog()
    rejects(lambda: cat.add(EventSpec(Event.LINK_CHANGE, "LINK_CHANGE", Direction.TO_CHILD,
                                      CATALOG.lookup("LINK_CHANGE").delivery, LinkChange)),
            "EEXIST: event LINK_CHANGE (1) declared twice")


def test_direction_allows():
    assert Direction.TO_CHILD.allows("parent") and not Direction.TO_CHILD.allows("child")
    assert Direction.TO_PARENT.allows("child") and not Direction.TO_PARENT.allows("parent")
    assert Direction.BOTH.allows("child") and Direction.BOTH.allows("parent")


def test_encode_payload_checks_type():
    spec = CATALOG.lookup("RESET_WARN")
    assert encode_payload(spec, {"reset_type": "FLR"}) == {"reset_type": ResetType.FLR}
    rejects(lambda: encode_payload(spec, LinkChange(up=True)),
            "EINVAL: $.payload: RESET_WARN takes ResetWarn, got LinkChange")
    assert decode_payload(spec, {"reset_type": 4}).reset_type is ResetType.FLR


# ---- envelope ------------------------------------------------------------------------

def test_envelope_round_trip():
    frames = E.encode(E.Call(r=7, dev=3, ev=76, timeout_ms=100), {"addr": b"\x02" * 6})
    msg, payload = E.decode(frames)
    assert isinstance(msg, E.Call) and (msg.r, msg.dev, msg.ev, msg.timeout_ms) == (7, 3, 76, 100)
    assert E.decode_payload_frame(payload) == {"addr": b"\x02" * 6}


def test_envelope_with_topic():
    frames = E.encode(E.Uevent(seq=1, action="ADD", dev="ixd.eth.0"), topic=b"bus")
    assert frames[0] == b"bus"
    msg, _ = E.decode(frames[1:])
    assert msg.action == "ADD"


def test_envelope_is_one_frame_with_the_payload_inside():
    frames = E.encode(E.Call(r=7, dev=3, ev=76, timeout_ms=100), {"addr": b"\x02" * 6})
    assert len(frames) == 1 and frames[0][:4] == E.MAGIC
    head = E.unpackb(frames[0][4:], "$")
    assert head["t"] == E.Msg.CALL and E.unpackb(head["p"], "$.p") == {"addr": b"\x02" * 6}
    fast = E.fast(E.Call, {"addr": b"\x02" * 6}, r=7, dev=3, ev=76, timeout_ms=100)
    assert E.unpackb(fast[0][4:], "$") == head


M = E.MAGIC


@pytest.mark.parametrize("frames, message", [
    ([], "EPROTO: $: expected 1 frame after the routing id, got 0"),
    ([b"XXXX\x80"], "EPROTO: $.magic: expected b'AUX1', got b'XXXX\\x80'"),
    ([M, b"\x80"], "EPROTO: $: expected 1 frame after the routing id, got 2"),
    ([M + b"\xc1"], "EPROTO: $.header: undecodable msgpack (FormatError)"),
    ([M + E.packb([1, 2])], "EPROTO: $.header: expected map"),
    ([M + E.packb({"t": 999})], "EPROTO: $.header.t: unknown message type 999"),
    ([M + E.packb({"t": 30, "r": 1, "dev": "a", "ev": 1, "timeout_ms": 5})],
     "EINVAL: $.header.dev: expected int, got str"),
    ([M + E.packb({"t": 30, "r": 1, "dev": 1, "ev": 1, "timeout_ms": 0})],
     "EINVAL: $.header.timeout_ms: 0 out of range 1..3600000"),
    ([M + E.packb({"t": 30, "r": 1, "dev": 1, "ev": 1, "timeout_ms": 5, "p": {"addr": 1}})],
     "EPROTO: $.header.p: expected bin (the packed payload), got dict"),
])
def test_envelope_rejections(frames, message):
    rejects(lambda: E.decode(frames), message)


def test_envelope_oversize():
    err = rejects(lambda: E.decode([M + E.packb({"t": 50, "r": 1, "op": "ping", "p": b"x" * (E.MAX_FRAME + 1)})]),
                  f"EMSGSIZE: $.header.p: payload over {E.MAX_FRAME} bytes")
    assert err.errno == Errno.EMSGSIZE
    err = rejects(lambda: E.decode([M + b"\x80" + b"x" * E.MAX_MSG]),
                  f"EMSGSIZE: $: message of {E.MAX_MSG + 5} bytes, over {E.MAX_MSG}")
    assert err.errno == Errno.EMSGSIZE


def test_deep_nesting_is_a_protocol_error():
    data = b"\x91" * 5000 + b"\x80"
    rejects(lambda: E.decode([M + data]), "EPROTO: $.header: undecodable msgpack (StackError)")


def test_event_batch_round_trip_and_rejections():
    frame = E.event_frame(4, 10, 2, 7, [E.packb(1) + E.packb({"up": True}), E.packb(2) + E.packb({})])
    msg, p = E.decode([frame])
    assert isinstance(msg, E.AsyncEvent) and (msg.dev, msg.seq, msg.inc, msg.epoch) == (4, 10, 2, 7)
    assert E.decode_events(p) == [1, {"up": True}, 2, {}]
    message = "EPROTO: $.header.p: expected a non-empty array of event code, payload map pairs"
    for bad in (None, E.packb([]), E.packb([1]), E.packb({"a": 1})):
        rejects(lambda bad=bad: E.decode_events(bad), message)
    rejects(lambda: E.decode_events(E.packb([1, {}, "x", {}])),
            "EPROTO: $.header.p[2]: expected an event code and a payload map")


def test_depth_and_size_are_bounded_while_decoding():
    deep = b"\x91" * 100 + b"\x00"
    head = E.packb({"t": 24, "r": 1, "dev": 1})
    frame = M + bytes([head[0] + 1]) + head[1:] + E.packb("x") + deep    # one more key: x, 100 deep
    err = rejects(lambda: E.decode([frame]), f"EPROTO: $.header.x: nested deeper than {E.MAX_DEPTH - 1} levels")
    assert err.errno == Errno.EPROTO
    rejects(lambda: E.decode_payload_frame(deep), f"EPROTO: $.payload: nested deeper than {E.MAX_DEPTH} levels")
    rejects(lambda: E.decode_events(E.packb([1, {"a": [[[[[[[[[[]]]]]]]]]]}]) .replace(b"\x90", deep)),
            f"EPROTO: $.header.p: nested deeper than {E.MAX_DEPTH} levels")
    ok = E.packb({"a": [[[[[[[[[[]]]]]]]]]]})
    assert E.decode_payload_frame(ok) == {"a": [[[[[[[[[[]]]]]]]]]]}
    huge = b"\xdd\xff\xff\xff\xff"        # an array claiming 2^32 - 1 items, in 5 bytes
    rejects(lambda: E.decode_payload_frame(huge), "EPROTO: $.payload: undecodable msgpack (ValueError)")


def test_register_restore_is_declared():
    frame = E.encode(E.Register(r=1, role="child", name="c", pid=2, start_time=1, schema=(1, 0),
                                restore={"bound": [{"name": "ixd.eth.0", "driver": "d", "refs": 2}]}))
    msg, _ = E.decode(frame)
    assert [(b.name, b.driver, b.refs) for b in msg.restore.bound] == [("ixd.eth.0", "d", 2)]
    assert E.decode(E.encode(E.Register(r=1, role="parent", name="p", pid=2, start_time=1,
                                        schema=(1, 0))))[0].restore.bound == ()
    base = {"t": 1, "r": 1, "role": "child", "name": "c", "pid": 2, "start_time": 1, "schema": [1, 0]}
    for restore, message in [
            (5, "$.header.restore: expected map, got int"),
            ({"bound": 5}, "$.header.restore.bound: expected array, got int"),
            ({"bound": ["x"]}, "$.header.restore.bound[0]: expected map, got str"),
            ({"bound": [{"refs": 1}]}, "$.header.restore.bound[0].name: required field missing"),
            ({"bound": [{"name": "a", "refs": "1"}]}, "$.header.restore.bound[0].refs: expected int, got str"),
            ({"bound": [{"name": "a", "refs": -1}]}, "$.header.restore.bound[0].refs: -1 out of range 0..2147483647"),
            ({"bound": [{"name": "a", "refs": 1e309}]}, "$.header.restore.bound[0].refs: expected int, got float")]:
        rejects(lambda restore=restore: E.decode([M + E.packb({**base, "restore": restore})]), f"EINVAL: {message}")


def test_fault_rules_are_declared():
    from proto.control import FaultSpec, fault_spec
    rule = fault_spec({"kind": "message", "target": "x", "action": "drop", "probability": 1, "count": 2})
    assert (rule.probability, rule.count, rule.signal) == (1.0, 2, "KILL")
    msg, _ = E.decode(E.encode(E.Fault(r=1, rules=[rule.to_wire()])))
    assert msg.rules == (rule,) and isinstance(msg.rules[0], FaultSpec)
    for bad, message in [
            ([], "$.rule: expected map, got array"),
            ({"kind": "boom", "target": "x"}, "$.rule.kind: 'boom' is not one of 'kill', 'handler', 'message'"),
            ({"kind": "kill", "target": "x", "signal": 9}, "$.rule.signal: expected str, got int"),
            ({"kind": "kill", "target": "x", "count": "x"}, "$.rule.count: expected int, got str"),
            ({"kind": "kill", "target": "x", "probability": float("inf")}, "$.rule.probability: inf out of range 0.0..1.0"),
            ({"kind": "kill", "target": "x", "probability": True}, "$.rule.probability: expected float, got bool"),
            ({"kind": "kill", "target": ["x"]}, "$.rule.target: expected str, got array")]:
        rejects(lambda bad=bad: fault_spec(bad), f"EINVAL: {message}")


def test_control_args_per_op():
    from proto.control import CTL_ARGS, ctl_args
    assert ctl_args("ls", {}).to_wire() == {}
    send = ctl_args("send", {"device": "a.b.0", "event": "RESET_WARN", "from": "child"})
    assert (send.timeout_ms, getattr(send, "from")) == (5000, "child")
    assert send.to_wire() == {"device": "a.b.0", "event": "RESET_WARN", "timeout_ms": 5000, "from": "child"}
    assert ctl_args("fault", {}).rule is None and ctl_args("fault", {}).to_wire()["rule"] is None
    rejects(lambda: ctl_args("nope", {}), "EOPNOTSUPP: $.header.op: unknown control op 'nope' (ops: "
            + ", ".join(sorted(CTL_ARGS)) + ")")
    rejects(lambda: ctl_args("send", {"device": "a", "event": None, "from": "child"}),
            "EINVAL: $.header.args.event: expected str, got nil")
    rejects(lambda: ctl_args("send", {"device": "a", "event": "X", "from": "both"}),
            "EINVAL: $.header.args.from: 'both' is not one of 'parent', 'child'")
    rejects(lambda: ctl_args("signal", {"target": "a", "signal": ["KILL"]}),
            "EINVAL: $.header.args.signal: expected str, got array")
    rejects(lambda: ctl_args("fault", {"action": "add", "rule": 3}), "EINVAL: $.header.args.rule: expected map, got int")
    rejects(lambda: ctl_args("uevents", {"since": -1}), "EINVAL: $.header.args.since: -1 out of range 0..9223372036854775807")


def test_supervisor_args_are_declared():
    from proto.control import UP_ARGS, ctl_args
    assert ctl_args("restart", {"name": "ixd"}, UP_ARGS).name == "ixd" and ctl_args("ps", {}, UP_ARGS).to_wire() == {}
    rejects(lambda: ctl_args("stop", {"name": ["ixd"]}, UP_ARGS), "EINVAL: $.header.args.name: expected str, got array")
    rejects(lambda: ctl_args("kill", {}, UP_ARGS),
            "EOPNOTSUPP: $.header.op: unknown control op 'kill' (ops: down, ps, restart, start, stop)")


def test_every_control_op_declares_its_args():
    """The broker's control ops and proto's declarations are the same set: an op added
    without declared args would act on unchecked values."""
    from auxipc.broker.control import Control
    from proto.control import CTL_ARGS
    ops = {n[3:] for n in dir(Control) if n.startswith("op_")}
    assert ops == set(CTL_ARGS)


def test_str_choices_and_float_fields():
    from proto.schema import Float, Payload, Str

    class Knob(Payload):
        mode = Str(max_len=8, choices=("on", "off"))
        level = Float(0.0, 2.0, default=0.5)
    assert Knob(mode="on").to_wire() == {"mode": "on", "level": 0.5}
    assert Knob.from_wire({"mode": "off", "level": 2}).level == 2.0
    rejects(lambda: Knob(mode="dim"), "EINVAL: $.payload.mode: 'dim' is not one of 'on', 'off'")
    rejects(lambda: Knob.from_wire({"mode": "on", "level": float("nan")}),
            "EINVAL: $.payload.level: nan out of range 0.0..2.0")
    assert Str(choices=("a", "b")).rule() == "one of 'a', 'b'" and Float(0, 1).rule() == "float 0.0..1.0"
    assert Str(max_len=4, nullable=True).check(None, "$.x") is None
    assert Str(max_len=4, nullable=True).rule() == "string, at most 4 chars or nil"
    rejects(lambda: Str(max_len=4).check(None, "$.x"), "EINVAL: $.x: expected str, got nil")


def test_broker_replies_are_declared():
    from proto.replies import DevAdded, Welcome, reply_type
    assert reply_type(E.Msg.DEV_ADD) is DevAdded and reply_type(E.Msg.UNREGISTER) is None
    w = Welcome.from_wire({"peer": "parent ixd[2]#1", "inc": 1, "epoch": 5, "hb_ivl_ms": 250, "hb_liveness": 3,
                           "schema": [1, 0], "faults": [{"kind": "kill", "target": "ixd", "point": "probe"}]})
    assert w.faults[0].signal == "KILL"
    assert DevAdded.from_wire({"name": "ixd.eth.0", "driver": None}).driver is None


# ---- errno -----------------------------------------------------------------------------

def test_errno_table_is_linux():
    assert (Errno.ENODEV, Errno.EINVAL, Errno.EOPNOTSUPP, Errno.ETIMEDOUT, Errno.EPROBE_DEFER) == (19, 22, 95, 110, 517)
    assert set(ERRNO_TABLE) == set(Errno)
    assert errno_name(-19) == "ENODEV" and errno_name(4000) == "E4000"
    assert strerror(-110) == "Connection timed out"


def test_auxerror_code_and_str():
    e = AuxError(-Errno.EBUSY, "reset in progress")
    assert (e.errno, e.code, e.name, str(e)) == (16, -16, "EBUSY", "EBUSY: reset in progress")
    assert AuxError(Errno.ENODEV).message == "No such device"


def test_importing_proto_loads_no_io_module():
    """What the AST check below cannot see: an I/O module pulled in by one of proto's imports."""
    import subprocess
    import sys
    code = ("import sys; before = set(sys.modules); import proto, proto.envelope, proto.control, "
            "proto.protodoc, proto.cheader, proto.mddoc; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} & "
            "{'zmq', 'logging', 'socket', 'threading', 'subprocess', 'select', 'asyncio'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "[]"


def test_proto_is_sans_io():
    import ast
    import pathlib
    banned = {"zmq", "os", "time", "logging", "socket", "threading", "subprocess"}
    for path in pathlib.Path(__file__).parent.parent.joinpath("proto").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = {node.module.split(".")[0]}
            else:
                continue
            assert not names & banned, f"{path.name} imports {names & banned}"


def test_protocol_doc_is_current():
    import pathlib

    from proto.protodoc import render
    doc = pathlib.Path(__file__).parent.parent / "docs" / "protocol.md"
    text = doc.read_text()
    assert render(text) == text, "docs/protocol.md is stale: run scripts/gen-docs"
