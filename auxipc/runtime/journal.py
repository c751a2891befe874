"""What a reference model or driver did, as JSON lines a test or a demo can read.

``journal(what, **fields)`` appends ``{"t": monotonic, "pid", "what", ...}`` to the
file named by ``$AUXIPC_JOURNAL`` (or ``$AXT_LOG``, which the test fixtures set
for every process they start: tests/conftest.py reads it with
``proc.records(what, **match)``). Nothing is written when neither is set.
Payloads, enums and bytes are written in their JSON forms. One ``write`` per
line, so processes sharing a file never interleave.

The last ``RECENT_MAX`` records are also kept in memory (``recent``), file or not:
the runtime answers the broker's ``inspect`` with them, so a test reads a driver's
journal through the bus (``auxbus.child(...).records``).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from enum import Enum

from proto.schema import Payload

ENVS = ("AUXIPC_JOURNAL", "AXT_LOG")
RECENT_MAX = 2000
recent: deque = deque(maxlen=RECENT_MAX)


def _plain(value):
    if isinstance(value, Payload):
        return value.to_json()
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, bytes):
        return ":".join(f"{b:02x}" for b in value) if len(value) == 6 else value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


def path() -> str | None:
    return next((os.environ[e] for e in ENVS if os.environ.get(e)), None)


def plain(value):
    """``value`` in its JSON form (payloads, enums, bytes converted; anything else
    JSON does not take, as its ``repr``)."""
    return json.loads(json.dumps(_plain(value), default=repr))


def journal(what: str, **fields) -> None:
    rec = {"t": time.monotonic(), "pid": os.getpid(), "what": what, **_plain(fields)}
    recent.append(rec)
    target = path()
    if not target:
        return
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    finally:
        os.close(fd)
