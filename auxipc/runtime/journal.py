"""What a reference model or driver did, as JSON lines a test or a demo can read.

``journal(what, **fields)`` appends ``{"t": monotonic, "pid", "what", ...}`` to the
file named by ``$AUXIPC_JOURNAL`` (or ``$AXT_LOG``, which the test fixtures set
for every process they start: tests/conftest.py reads it with
``proc.records(what, **match)``). Nothing is written when neither is set.
Payloads, enums and bytes are written in their JSON forms. One ``write`` per
line, so processes sharing a file never interleave.
"""

from __future__ import annotations

import json
import os
import time
from enum import Enum

from proto.schema import Payload

ENVS = ("AUXIPC_JOURNAL", "AXT_LOG")


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


def journal(what: str, **fields) -> None:
    target = path()
    if not target:
        return
    rec = {"t": time.monotonic(), "pid": os.getpid(), "what": what, **_plain(fields)}
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    finally:
        os.close(fd)
