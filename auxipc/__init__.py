"""auxipc: a multi-process emulator of the Linux auxiliary bus with bidirectional events."""

__version__ = "0.1.0"
