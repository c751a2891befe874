"""The message envelope: message types, their headers, and frames <-> typed messages.

A message is one ZeroMQ frame (the ROUTER's routing-id frame, added and removed
by ZeroMQ, is not part of it; on pub/sub a topic frame comes first)::

    [MAGIC + header]           request/reply channel (DEALER <-> ROUTER)
    [topic] [MAGIC + header]   pub/sub channel

``MAGIC`` is ``b"AUX1"``: protocol tag and major version, the frame's first four
bytes. ``header`` is a msgpack map whose key ``t`` is the message type (``Msg``)
and whose other keys are that type's declared fields. ``p``, present on
event-carrying messages, is a msgpack ``bin`` holding the msgpack map of the
event's payload (or reply) type: the broker checks it and forwards the bytes
untouched. One frame a message because every extra frame costs a send, a receive
and a ``RCVMORE`` query on each of the four hops of a call. See docs/protocol.md.
"""

from __future__ import annotations

import keyword
from functools import partial
from typing import TYPE_CHECKING, Union

import msgpack
from msgpack import unpackb as _unpackb_raw

from .compiled import Compiled, struct_for
from .errno import AuxError, Errno, ProtocolError
from .messages import (  # noqa: F401  (re-exported: envelope is where peers find them)
    _HEADERS,
    PROTOCOL_VERSION,
    REQ_ID,
    U32,
    AsyncEvent,
    Bind,
    Call,
    Ctl,
    DevAdd,
    DevDelete,
    DevFind,
    DevGet,
    DevInit,
    DevPm,
    DevPut,
    DevUninit,
    DrvRegister,
    DrvUnregister,
    Fault,
    Header,
    Heartbeat,
    Inject,
    LaneGrant,
    LaneOffer,
    LaneRevoke,
    LockReq,
    Msg,
    Pm,
    Probe,
    Register,
    Release,
    Remove,
    Request,
    Reregister,
    Result,
    Resync,
    Shutdown,
    Uevent,
    Unbind,
    UnlockReq,
    Unregister,
    codes,
    header,
    strs,
)
from .schema import Payload

if TYPE_CHECKING:
    import msgspec

MAGIC = b"AUX1"
MAX_FRAME = 1 << 20  # bytes: the largest payload
MAX_MSG = MAX_FRAME + 4096   # bytes: the largest message frame (payload + header); MAXMSGSIZE
# Bounds applied while msgpack decodes, before anything walks a value: no string, bin,
# array or map may claim more than this, and no value nests deeper than MAX_DEPTH
# (a 1,000-deep value would otherwise reach Python's recursion limit in the first
# repr, packb or comparison that walks it).
MAX_ITEMS = 1 << 17
MAX_DEPTH = 32
_unpackb = partial(_unpackb_raw, raw=False, strict_map_key=True, max_str_len=MAX_MSG, max_bin_len=MAX_MSG,
                   max_array_len=MAX_ITEMS, max_map_len=MAX_ITEMS)

# ---- codec -----------------------------------------------------------------------

_packer_default = None


_PACKER = msgpack.Packer(use_bin_type=True)

# packb(obj) -> msgpack bytes. One shared Packer (a new one per call costs 3x the
# packing): its ``pack`` is one C call that holds the GIL for plain data (maps,
# lists, ints, strings, bytes; no ``default`` hook) and resets its buffer even when
# it raises, so threads cannot interleave inside it.
packb = _PACKER.pack


def unpackb(data: bytes, what: str):
    """One msgpack value, within the size bounds (``_unpackb``) and MAX_DEPTH; EPROTO naming ``what``."""
    try:
        obj = _unpackb(data)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"{what}: undecodable msgpack ({type(exc).__name__})") from None
    if type(obj) is dict or type(obj) is list:
        check_depth(obj, what)
    return obj


def check_depth(obj, what: str, limit: int = MAX_DEPTH) -> None:
    """EPROTO if ``obj`` nests deeper than ``limit`` containers. Without recursion:
    the point is to refuse what recursion could not walk."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        items = value.values() if type(value) is dict else value
        for item in items:
            if type(item) is dict or type(item) is list:
                if depth >= limit:
                    raise ProtocolError(f"{what}: nested deeper than {limit} levels")
                stack.append((item, depth + 1))


_CONTAINERS = frozenset((dict, list))


def _check_header_depth(head: dict) -> None:
    """``check_depth`` for each container field of a header, naming the field (most
    headers have none: one pass over the values' types, in C)."""
    if _CONTAINERS.isdisjoint(map(type, head.values())):
        return
    for key, value in head.items():
        if (type(value) is dict or type(value) is list) and value:
            check_depth(value, f"$.header.{key}", MAX_DEPTH - 1)


def encode(msg: Header, payload: dict | bytes | None = None, topic: bytes | None = None) -> list[bytes]:
    """Frames for a message; ``payload`` is a wire map or already-packed bytes."""
    head = msg.to_wire()
    head["t"] = int(msg.TYPE)
    if payload is not None:
        head["p"] = payload if isinstance(payload, bytes) else packb(payload)
    frame = MAGIC + packb(head)
    return [frame] if topic is None else [topic, frame]


def fast(cls: type[Header], payload: dict | bytes | None = None, **fields) -> list[bytes]:
    """Frames for a message this process builds itself, skipping validation (the hot
    path: CALL, REQUEST, RESULT). Everything *received* is validated by ``decode``.
    Unknown field names are a bug here, caught by the tests' round trips."""
    head = dict(_wire_defaults(cls))
    head.update(fields)
    head["t"] = cls.TYPE
    if payload is not None:
        head["p"] = payload if isinstance(payload, bytes) else packb(payload)
    return [MAGIC + packb(head)]


def frame_maker(cls: type[Header]):
    """``fast`` for one message type as straight-line code (half its cost): a function
    ``(payload=None, *, field=..., ...) -> frames`` taking the header's fields by name,
    those with defaults optional. For the hot path: CALL, REQUEST, RESULT."""
    names = list(cls.fields)
    if not all(n.isidentifier() and not keyword.iskeyword(n) and n not in ("payload", "t", "p") for n in names):
        return partial(fast, cls)
    env = {"MAGIC": MAGIC, "packb": packb, "T": int(cls.TYPE)}
    params, keys = [], []
    for i, (name, f) in enumerate(cls.fields.items()):
        if f.required:
            params.append(name)
        else:
            env[f"D{i}"] = f.to_wire(f.default)
            params.append(f"{name}=D{i}")
        keys.append(f"{name!r}: {name}")
    src = (f"def make(payload=None, *, {', '.join(params)}):\n"
           f"    head = {{{', '.join(keys)}, 't': T}}\n"
           "    if payload is not None:\n"
           "        head['p'] = payload if isinstance(payload, bytes) else packb(payload)\n"
           "    return [MAGIC + packb(head)]\n")
    exec(src, env)
    return env["make"]


_DEFAULTS: dict = {}


def _wire_defaults(cls: type[Header]) -> dict:
    try:
        return _DEFAULTS[cls]
    except KeyError:
        d = _DEFAULTS[cls] = {n: f.to_wire(f.default) for n, f in cls.fields.items() if not f.required}
        return d


# What a Struct decode raises for input it does not take (msgspec's errors are added by
# init_structs; a deep nest raises Python's recursion guard).
_NOT_TAKEN: tuple[type[BaseException], ...] = (RecursionError,)
_head_decoder: msgspec.msgpack.Decoder | None = None
_head_compiled: dict[type, Compiled] = {}
# Messages a process decodes field by field before it builds the Structs: a short-lived
# process (a CLI command) never imports msgspec (~20 ms); the zygote builds them up front.
FIELD_DECODES = 16
_field_decodes = 0
_building = False


def init_structs() -> None:
    """Build the Structs of every header type whose rules a Struct states, as one union
    tagged by ``t`` (the others, REGISTER and FAULT with their nested defaults, always
    take ``decode_fields``); from now on ``decode``, ``load_payload`` and
    ``check_payload`` take them."""
    global _head_decoder, _head_compiled, _NOT_TAKEN, _building
    if _head_decoder is not None or _building:
        return      # built, or being built by another thread (this one decodes field by field meanwhile)
    _building = True
    try:
        import msgspec
        compiled = {}
        for t, cls in _HEADERS.items():
            c = struct_for(cls, int(t))
            if c is not None:
                compiled[c.struct] = c
        decoder = msgspec.msgpack.Decoder(Union[tuple(compiled)])
        _NOT_TAKEN = (msgspec.MsgspecError, RecursionError)
        _head_compiled = compiled
        _head_decoder = decoder     # last: a thread that sees the decoder sees its table
    finally:
        _building = False


def _warm_up() -> msgspec.msgpack.Decoder | None:
    global _field_decodes
    _field_decodes += 1
    if _field_decodes > FIELD_DECODES:
        init_structs()
    return _head_decoder


def decode(frames: list[bytes]) -> tuple[Header, bytes | None]:
    """Typed header and raw payload (the ``p`` bytes, or None) from ``[MAGIC + header]``.

    Raises ProtocolError (EPROTO) for framing faults and AuxError(EINVAL) naming
    the header field for a bad field."""
    if len(frames) != 1:
        raise ProtocolError(f"$: expected 1 frame after the routing id, got {len(frames)}")
    frame = frames[0]
    if frame[:4] != MAGIC:
        raise ProtocolError(f"$.magic: expected {MAGIC!r}, got {bytes(frame[:8])!r}")
    if len(frame) <= MAX_MSG:
        # The common case in one C call: a header of a known type, every field valid, no
        # unknown key, no free-form map with content, a bin payload. Anything else goes
        # the field-by-field way (decode_fields), which accepts it or names the fault.
        decoder = _head_decoder or _warm_up()
        if decoder is not None:
            try:
                s = decoder.decode(memoryview(frame)[4:])
            except _NOT_TAKEN:
                pass
            else:
                compiled = _head_compiled.get(type(s))
                payload = s.p
                if compiled is not None and compiled.ok(s) and (payload is None or len(payload) <= MAX_FRAME):
                    return compiled.conv(s), payload
    return decode_fields(frame)


def decode_fields(frame: bytes) -> tuple[Header, bytes | None]:
    """``decode`` without the Structs: unpacked, then checked field by field; the
    reference the Struct path must agree with, and the path that names every fault."""
    if len(frame) <= MAX_MSG:
        try:     # a header map with a known type and a bin payload, checked field by field
            # str and bin are bounded by the frame's length (msgpack's default), at most MAX_MSG here
            head = _unpackb_raw(frame[4:], raw=False, strict_map_key=True, max_array_len=MAX_ITEMS,
                                max_map_len=MAX_ITEMS)
            t = head["t"]
            payload = head.get("p")
            if type(t) is int and t in _HEADERS and (payload is None or (
                    type(payload) is bytes and len(payload) <= MAX_FRAME)):
                _check_header_depth(head)
                del head["t"]
                if payload is not None:
                    del head["p"]
                return _HEADERS[t].from_wire(head, "$.header"), payload
        except AuxError:
            raise
        except Exception:  # noqa: BLE001 - decode_frame below names the fault
            pass
    return decode_frame(frame)


def load_payload(cls: type[Payload], data: bytes | None, what: str = "$.payload") -> Payload:
    """A payload frame (msgpack bytes; None when absent) validated into ``cls``: decoded
    and checked in one pass by its Struct, else (or on any doubt) unpacked and checked
    field by field, which names the fault."""
    if data is not None and _head_decoder is not None:
        compiled = struct_for(cls)
        if compiled is not None:
            try:
                s = compiled.decoder.decode(data)
            except _NOT_TAKEN:
                pass
            else:
                if compiled.ok(s):
                    return compiled.conv(s)
    return cls.from_wire(decode_payload_frame(data, what), what)


def check_payload(cls: type[Payload], data: bytes | None, what: str = "$.payload") -> None:
    """``load_payload`` for a payload only checked, then forwarded as it came (the broker):
    no instance is built."""
    if data is not None and _head_decoder is not None:
        compiled = struct_for(cls)
        if compiled is not None:
            try:
                if compiled.ok(compiled.decoder.decode(data)):
                    return
            except _NOT_TAKEN:
                pass
    cls.from_wire(decode_payload_frame(data, what), what)


def decode_frame(frame: bytes) -> tuple[Header, bytes | None]:
    """``decode`` for one frame whose MAGIC the caller has checked."""
    if len(frame) > MAX_MSG:
        raise ProtocolError(f"$: message of {len(frame)} bytes, over {MAX_MSG}", Errno.EMSGSIZE)
    head = unpackb(frame[4:], "$.header")
    if type(head) is not dict:
        raise ProtocolError("$.header: expected map")
    _check_header_depth(head)
    t = head.pop("t", None)
    cls = _HEADERS.get(t) if type(t) is int else None
    if cls is None:
        raise ProtocolError(f"$.header.t: unknown message type {t!r}")
    payload = head.pop("p", None)
    if payload is not None:
        if type(payload) is not bytes:
            raise ProtocolError(f"$.header.p: expected bin (the packed payload), got {type(payload).__name__}")
        if len(payload) > MAX_FRAME:
            raise ProtocolError(f"$.header.p: payload over {MAX_FRAME} bytes", Errno.EMSGSIZE)
    return cls.from_wire(head, "$.header"), payload


def pack_events(packed: list[bytes]) -> bytes:
    """An EVENT's ``p`` from events packed one by one (``packb(ev) + payload bytes``
    each): the payloads are spliced in as they are, never re-encoded."""
    return _PACKER.pack_array_header(2 * len(packed)) + b"".join(packed)


def event_frame(dev: int, seq: int, inc: int, epoch: int, packed: list[bytes], ts_ns: int = 0,
                src_seq: int = 0) -> bytes:
    """The frame of an EVENT message carrying ``packed`` (see ``pack_events``), with the
    sender's stamp when given."""
    head = {"t": Msg.EVENT, "dev": dev, "seq": seq, "inc": inc, "epoch": epoch, "p": pack_events(packed)}
    if ts_ns:
        head["ts_ns"], head["src_seq"] = ts_ns, src_seq
    return MAGIC + packb(head)


def decode_events(data: bytes | None) -> list:
    """The ``[ev, payload, ev, payload, ...]`` array of an EVENT message, checked for shape."""
    items = unpackb(data, "$.header.p") if data is not None else None
    if type(items) is not list or not items or len(items) % 2:
        raise ProtocolError("$.header.p: expected a non-empty array of event code, payload map pairs")
    for i in range(0, len(items), 2):
        if type(items[i]) is not int or type(items[i + 1]) is not dict:
            raise ProtocolError(f"$.header.p[{i}]: expected an event code and a payload map")
    return items


def decode_payload_frame(data: bytes | None, what: str = "$.payload"):
    """The msgpack object in a payload frame ({} when absent)."""
    if data is None:
        return {}
    return unpackb(data, what)


def header_types() -> dict[int, type[Header]]:
    return dict(_HEADERS)
