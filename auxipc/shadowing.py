"""Whether a user's own ``proto.py``/``parent.py``/``child.py`` hides auxipc's packages.

auxipc ships three top-level packages besides itself. A module of the same name
earlier on ``sys.path`` (a test directory, the current directory under
``python -m``) wins the import and every later ``from proto.errno import ...``
fails far from the cause. This module imports only the standard library, so it
can run, and say so in one line, before anything of auxipc's is imported.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGES = ("proto", "parent", "child")


def _origin(name: str) -> str | None:
    mod = sys.modules.get(name)
    if mod is not None:
        return getattr(mod, "__file__", None)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


def shadowed() -> str | None:
    """One line naming the first of auxipc's top-level packages that resolves to a
    file outside the auxipc distribution (and that file), or None when all are auxipc's."""
    home = Path(__file__).resolve().parent.parent
    for name in PACKAGES:
        want = home / name / "__init__.py"
        origin = _origin(name)
        if origin is None or Path(origin).resolve() != want:
            found = origin or "nothing importable (a namespace package or a broken install)"
            return (f"ENOENT: {name!r} resolves to {found}, not auxipc's package {want.parent}: "
                    f"a module of yours named {name}.py shadows it; rename it or move it off sys.path")
    return None
