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

from functools import partial

import msgpack
from msgpack import unpackb as _unpackb_raw

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


_DEFAULTS: dict = {}


def _wire_defaults(cls: type[Header]) -> dict:
    try:
        return _DEFAULTS[cls]
    except KeyError:
        d = _DEFAULTS[cls] = {n: f.to_wire(f.default) for n, f in cls.fields.items() if not f.required}
        return d


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
        try:     # the common case in one call: a header map with a known type and a bin payload
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


def event_frame(dev: int, seq: int, inc: int, epoch: int, packed: list[bytes]) -> bytes:
    """The frame of an EVENT message carrying ``packed`` (see ``pack_events``)."""
    return MAGIC + packb({"t": Msg.EVENT, "dev": dev, "seq": seq, "inc": inc, "epoch": epoch,
                          "p": pack_events(packed)})


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
