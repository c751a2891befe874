"""auxipc: a multi-process emulator of the Linux auxiliary bus with bidirectional events.

The public API: what a parent model, an auxiliary driver, a test or a tool imports.
Each name is loaded on first use (module ``__getattr__``), so ``import auxipc`` and
``auxipc --help`` import neither zmq nor msgpack. ::

    from auxipc import AuxDriver, Event, handler

    class MyEth(AuxDriver):
        name = "my_eth"
        id_table = ("ixd.eth",)

        @handler(Event.LINK_CHANGE)
        def on_link(self, adev, payload):
            ...
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> "module:attribute"
_API = {
    # models and drivers
    "AuxDriver": "child.runtime:AuxDriver",
    "AuxDeviceId": "child.runtime:AuxDeviceId",
    "ChildDevice": "child.runtime:ChildDevice",
    "ParentModel": "parent.runtime:ParentModel",
    "ParentDevice": "parent.runtime:ParentDevice",
    "handler": "auxipc.runtime.handlers:handler",
    "journal": "auxipc.runtime.journal:journal",
    "plain": "auxipc.runtime.journal:_plain",
    "Machine": "auxipc.broker.lifecycle:Machine",
    "IllegalTransition": "auxipc.broker.lifecycle:IllegalTransition",
    "SoakLoad": "auxipc.testing.soak:Load",
    # the protocol
    "Event": "proto.events:Event",
    "Direction": "proto.events:Direction",
    "Payload": "proto.schema:Payload",
    "AuxError": "proto.errno:AuxError",
    "Errno": "proto.errno:Errno",
    # observing and driving a running bus
    "Client": "auxipc.observe.client:Client",
    "Watcher": "auxipc.observe.watch:Watcher",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    try:
        target = _API[name]
    except KeyError:
        raise AttributeError(f"module 'auxipc' has no attribute {name!r}") from None
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value         # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
