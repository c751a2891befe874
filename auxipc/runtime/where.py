"""Where in the user's code a bug happened, as ``file:line``: the driver or model
code the user wrote, never the runtime's frames.

A frame is the library's when its file is in one of the packages ``auxipc`` and
``proto``, is the parent or child runtime (``parent/runtime.py``,
``child/runtime.py``), or belongs to Python itself or an installed package
(``sysconfig``'s stdlib and purelib/platlib paths). Everything else is the
user's: their drivers, their models, the reference drivers in ``child/`` and
``parent/``. A report that finds no user frame says so with an empty string.
"""

from __future__ import annotations

import functools
import linecache
import os
import sys
import sysconfig
import types

import proto

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # auxipc/
_LIB_DIRS = tuple({os.path.join(p, "") for p in (
    _HERE, os.path.dirname(os.path.abspath(proto.__file__)),
    *(sysconfig.get_paths().get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib")))
    if p and p != os.sep})
_RUNTIME_FILES = (os.path.join("parent", "runtime.py"), os.path.join("child", "runtime.py"))


@functools.lru_cache(maxsize=1024)
def is_user_file(filename: str) -> bool:
    if not filename or filename.startswith("<"):
        return False
    path = os.path.abspath(filename)
    return not path.startswith(_LIB_DIRS) and not path.endswith(_RUNTIME_FILES)


def code_site(fn) -> str:
    """``file:line`` of the ``def`` of a handler, probe or callback (bound methods,
    ``functools.partial`` and decorated functions unwrapped); '' if it has no code."""
    for _ in range(8):
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif isinstance(fn, types.MethodType):
            fn = fn.__func__
        elif hasattr(fn, "__wrapped__"):
            fn = fn.__wrapped__
        else:
            break
    code = getattr(fn, "__code__", None)
    if code is None:
        return ""
    line = code.co_firstlineno          # a decorated function's is its first decorator's
    for n in range(line, line + 16):
        if linecache.getline(code.co_filename, n).lstrip().startswith(("def ", "async def ")):
            line = n
            break
    return f"{code.co_filename}:{line}"


def caller_site(skip: int = 1) -> str:
    """``file:line`` of the innermost user frame on the current stack (what called the
    runtime: a sync call in an atomic handler, a ``get()`` never put); ''."""
    frame = sys._getframe(skip)
    while frame is not None:
        if is_user_file(frame.f_code.co_filename):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return ""


def raise_site(tb) -> str:
    """``file:line`` of the last user frame of a traceback (where the user's code raised,
    or called what raised); ''."""
    found = ""
    while tb is not None:
        if is_user_file(tb.tb_frame.f_code.co_filename):
            found = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found
