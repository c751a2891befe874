"""Schema 1.1: SKEW_ECHO's payload and reply gain ``lanes`` (appended, with a default),
and two events appear."""

from proto.events import Delivery, Direction, EventSpec
from proto.schema import Empty, Int, Payload

from . import v1_0

SCHEMA_VERSION = (1, 1)


class Echo(v1_0.Echo):
    """A message either side sends; the receiver answers with what it decoded."""
    lanes = Int(1, 16, default=1, since=(1, 1), doc="appended in 1.1")


class EchoReply(v1_0.EchoReply):
    """What the receiver decoded."""
    lanes = Int(1, 16, default=1, since=(1, 1), doc="appended in 1.1")


class Note(Payload):
    """A new async event's payload."""
    level = Int(0, 7, default=0)


EVENTS = (
    EventSpec(v1_0.ECHO, "SKEW_ECHO", Direction.BOTH, Delivery.SYNC, Echo, EchoReply,
              doc="echo the payload back (a user-defined event in both directions)"),
    EventSpec(0x1001, "SKEW_NEW_CALL", Direction.BOTH, Delivery.SYNC, Empty, since=(1, 1),
              doc="a sync event that appeared in 1.1"),
    EventSpec(0x1002, "SKEW_NEW_NOTE", Direction.BOTH, Delivery.ASYNC, Note, since=(1, 1),
              doc="an async event that appeared in 1.1"),
)
