"""The msgspec Structs derived from the declarations (proto/compiled.py) against the
field-by-field path they stand in for: on any input, the same instance or the same
error (errno and message naming the field)."""

from __future__ import annotations

import math
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from proto import envelope as E
from proto.compiled import struct_for
from proto.errno import AuxError
from proto.events import CATALOG
from proto.schema import Payload

E.init_structs()     # as a long-lived process has after its first FIELD_DECODES messages
HEADERS = sorted(E.header_types().items())
PAYLOADS = sorted({c for spec in CATALOG for c in (spec.payload, spec.reply) if c is not None},
                  key=lambda c: c.__name__)

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**63), 2**64 - 1), st.sampled_from([-1, 0, 1, 7, 8, 100, 255, 256, 4095, 4096, 2**31, 2**32]),
    st.floats(allow_nan=True), st.text(max_size=300), st.binary(max_size=300),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=70),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=80)


def outcome(fn):
    try:
        return "ok", fn()
    except AuxError as exc:
        return "error", str(exc)


def same(a, b) -> bool:
    """Equal and of the same types all the way down (an enum member is not its int, a tuple
    is not a list, a float is not an int)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, Payload):
        return all(same(getattr(a, n), getattr(b, n)) for n in type(a).fields) and vars(a).keys() == vars(b).keys()
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def mutate(data, base: dict) -> dict:
    """A wire map near a valid one: some fields replaced by arbitrary values, some dropped,
    maybe an unknown key."""
    wire = dict(base)
    for name in list(wire):
        choice = data.draw(st.integers(0, 5))
        if choice == 0:
            wire[name] = data.draw(values)
        elif choice == 1:
            del wire[name]
    if data.draw(st.booleans()):
        wire[data.draw(st.sampled_from(["x", "zz", "from", "p"]))] = data.draw(values)
    return wire


def check_payload_agrees(cls, raw: bytes) -> None:
    slow = outcome(lambda: cls.from_wire(E.decode_payload_frame(raw), "$.payload"))
    fast = outcome(lambda: E.load_payload(cls, raw))
    assert fast[0] == slow[0], (cls.__name__, raw, fast, slow)
    assert same(fast[1], slow[1]) if fast[0] == "ok" else fast[1] == slow[1], (cls.__name__, fast, slow)
    checked = outcome(lambda: E.check_payload(cls, raw))
    assert checked[0] == slow[0] and (checked[0] == "ok" or checked[1] == slow[1]), (cls.__name__, checked, slow)


def test_hot_messages_and_catalog_payloads_have_structs():
    for cls in (E.Call, E.Request, E.Result, E.AsyncEvent, E.Heartbeat, E.LockReq, E.UnlockReq):
        assert struct_for(cls, int(cls.TYPE)) is not None, cls.__name__
    assert [c.__name__ for c in PAYLOADS if struct_for(c) is None] == []


def test_valid_examples_take_the_struct_path_and_agree():
    for cls in PAYLOADS:
        raw = E.packb(cls.example().to_wire())
        compiled = struct_for(cls)
        assert compiled.ok(compiled.decoder.decode(raw)), cls.__name__
        check_payload_agrees(cls, raw)
    for _t, cls in HEADERS:
        msg = cls.example()
        frame = E.encode(msg, b"\x80")[0]
        fast, slow = E.decode([frame]), E.decode_fields(frame)
        assert same(fast[0], slow[0]) and fast[0] == msg and fast[1] == slow[1] == b"\x80", cls.__name__


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_payloads_agree_with_the_field_path(data):
    cls = data.draw(st.sampled_from(PAYLOADS))
    raw = E.packb(mutate(data, cls.example().to_wire()))
    check_payload_agrees(cls, raw)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_headers_agree_with_the_field_path(data):
    t, cls = data.draw(st.sampled_from(HEADERS))
    head = mutate(data, cls.example().to_wire())
    head["t"] = data.draw(st.sampled_from([int(t), int(t), 999, "30", None]))
    if data.draw(st.booleans()):
        head["p"] = data.draw(st.one_of(st.binary(max_size=20), values))
    frame = E.MAGIC + E.packb(head)
    fast = outcome(lambda: E.decode([frame]))
    slow = outcome(lambda: E.decode_fields(frame))
    assert fast[0] == slow[0], (head, fast, slow)
    if fast[0] == "ok":
        assert same(fast[1][0], slow[1][0]) and fast[1][1] == slow[1][1], (head, fast, slow)
    else:
        assert fast[1] == slow[1]


def test_rules_a_struct_cannot_state_fall_back_and_name_the_field():
    from proto.payloads import Qos
    wire = Qos.example().to_wire() | {"rel_bw": [50, 50, 1, 0, 0, 0, 0, 0]}     # sums to 101
    raw = E.packb(wire)
    assert not struct_for(Qos).ok(struct_for(Qos).decoder.decode(raw))
    check_payload_agrees(Qos, raw)
    assert outcome(lambda: E.load_payload(Qos, raw)) == (
        "error", "EINVAL: $.payload.rel_bw: items sum to 101, must sum to 100")
    frame = E.fast(E.Result, None, r=1, d={1: "int key"})[0]    # a map with content: checked field by field
    assert outcome(lambda: E.decode([frame])) == outcome(lambda: E.decode_fields(frame))


def test_deep_nesting_is_refused_as_before():
    deep: list = []
    for _ in range(1000):
        deep = [deep]
    for t, cls in HEADERS:
        frame = E.MAGIC + E.packb(cls.example().to_wire() | {"t": int(t), "x": deep})
        slow = outcome(lambda f=frame: E.decode_fields(f))
        assert slow[0] == "error" and outcome(lambda f=frame: E.decode([f])) == slow, cls.__name__
    for cls in PAYLOADS:
        for wire in (cls.example().to_wire() | {"x": deep}, deep):
            check_payload_agrees(cls, E.packb(wire))


def test_a_short_lived_process_never_imports_msgspec():
    """A CLI command decodes a few answers: field by field, without msgspec's import."""
    code = ("import sys; from proto import envelope as E\n"
            "frame = E.fast(E.Result, b'\\x80', r=1)\n"
            "for _ in range(E.FIELD_DECODES): E.decode(frame)\n"
            "assert 'msgspec' not in sys.modules\n"
            "E.decode(frame); assert 'msgspec' in sys.modules and E._head_decoder is not None\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_frame_makers_build_what_fast_builds():
    for _t, cls in HEADERS:
        make = E.frame_maker(cls)
        wire = cls.example().to_wire()
        for payload in (None, b"\x80", {"a": 1}):
            got, want = E.decode(make(payload, **wire)), E.decode(E.fast(cls, payload, **wire))
            assert same(got[0], want[0]) and got[1] == want[1], cls.__name__
        required = {n: v for n, v in wire.items() if cls.fields[n].required}
        assert E.decode(make(**required)) == E.decode(E.fast(cls, **required)), cls.__name__


def test_threads_that_decode_at_once_build_one_struct_per_header():
    """A runtime's heartbeat thread decodes beside its main thread: the Structs are derived
    once (never two for one tag, which would make the union ambiguous) and decoding never fails."""
    code = """if True:
        import sys, threading
        from proto import envelope as E
        frames = [E.fast(cls, b"\\x80", **cls.example().to_wire()) for cls in E.header_types().values()]
        errors = []
        def work():
            try:
                for _ in range(3):
                    for f in frames:
                        E.decode(f)
            except Exception as exc:
                errors.append(repr(exc))
        sys.setswitchinterval(1e-6)
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        assert not errors, errors
        assert E._head_decoder is not None
        tags = [c.struct.__struct_config__.tag for c in E._head_compiled.values()]
        assert len(tags) == len(set(tags)) >= 20, tags
    """
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
