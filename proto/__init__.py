"""auxipc's protocol: the event schema, the envelope and the errno table.

Sans-I/O: this package imports no zmq, os, time or logging. Typed messages go
in, bytes come out, and back.
"""

from .errno import AuxError, Errno, ProtocolError, errno_name, strerror
from .events import (
    CATALOG,
    SCHEMA_VERSION,
    USER_EVENT_BASE,
    Catalog,
    Context,
    Delivery,
    Direction,
    Event,
    EventSpec,
    decode_payload,
    encode_payload,
    negotiate,
)
from .extend import build_catalog
from .schema import Payload

__all__ = ["AuxError", "Errno", "ProtocolError", "errno_name", "strerror", "CATALOG",
           "SCHEMA_VERSION", "USER_EVENT_BASE", "Catalog", "Context", "Delivery", "Direction", "Event",
           "EventSpec", "Payload", "build_catalog", "decode_payload", "encode_payload", "negotiate"]
