"""Schema 2.0: the next major. Nothing binds across it."""

SCHEMA_VERSION = (2, 0)
EVENTS = ()
