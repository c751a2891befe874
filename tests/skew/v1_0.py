"""Schema 1.0 of the skew tests' user contract: one event, SKEW_ECHO."""

from proto.events import Delivery, Direction, EventSpec
from proto.schema import Int, Payload, Str

SCHEMA_VERSION = (1, 0)


class Echo(Payload):
    """A message either side sends; the receiver answers with what it decoded."""
    seq = Int(0, 2**31 - 1)
    text = Str(max_len=64, default="")


class EchoReply(Payload):
    """What the receiver decoded."""
    seq = Int(0, 2**31 - 1)
    text = Str(max_len=64, default="")


ECHO = 0x1000

EVENTS = (
    EventSpec(ECHO, "SKEW_ECHO", Direction.BOTH, Delivery.SYNC, Echo, EchoReply,
              doc="echo the payload back (a user-defined event in both directions)"),
)
