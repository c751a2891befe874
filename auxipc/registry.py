"""Names for the parent models and child drivers the CLI can start.

Built-ins are listed here; a user's own is given as ``package.module:Class`` and
imported from ``sys.path`` plus the current directory (the ``auxipc`` console
script, unlike ``python -m``, does not put it there).
"""

from __future__ import annotations

import importlib
import os
import sys

from proto.errno import AuxError, Errno

MODELS = {"ixd": "parent.ixd:Ixd", "soak": "parent.soak:SoakParent",
          # hardware-backed parents (parent/nic.py): Model B, and two more shapes of the same contract
          "idpf": "parent.idpf:Idpf", "mlx5_core": "parent.mlx5:Mlx5Core", "ice": "parent.ice:Ice"}
DRIVERS = {"idpf_eth": "child.idpf_eth:IdpfEth", "soak_a": "child.soak:SoakDriver", "soak_b": "child.soak:SoakDriverB",
           "idpf_prime": "child.idpf_eth:IdpfPrime", "mlx5e": "child.netdev:Mlx5Eth",
           "irdma": "child.rdma:Irdma", "mlx5_ib": "child.rdma:Mlx5Ib", "mlx5_vdpa": "child.vnet:Mlx5Vnet"}


def _with_cwd() -> None:
    """Put the current directory on sys.path, last: the user's module is found where
    they stand, and never hides an installed package of the same name."""
    cwd = os.getcwd()
    if not any(os.path.abspath(p or ".") == cwd for p in sys.path):
        sys.path.append(cwd)


def load(spec: str, table: dict, what: str):
    """The class ``spec`` names: a built-in name from ``table`` or ``module:Class``.
    Raises AuxError ENOENT naming the module and the sys.path entries tried."""
    target = table.get(spec, spec)
    if ":" not in target:
        raise AuxError(Errno.ENOENT, f"unknown {what} {spec!r} (built-in: {', '.join(sorted(table))}; "
                       "or give module:Class)")
    module, _, attr = target.partition(":")
    _with_cwd()
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise AuxError(Errno.ENOENT, f"cannot load {what} {target!r}: importing {module} failed: "
                           f"ModuleNotFoundError: {exc}") from None
        looked = ", ".join(os.path.abspath(p or ".") for p in sys.path)
        raise AuxError(Errno.ENOENT, f"cannot load {what} {target!r}: no module {exc.name!r} "
                       f"(looked in {looked})") from None
    except Exception as exc:     # the user's module itself is broken (SyntaxError, its own ImportError, ...)
        raise AuxError(Errno.ENOENT, f"cannot load {what} {target!r}: importing {module} failed: "
                       f"{type(exc).__name__}: {exc}") from None
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise AuxError(Errno.ENOENT, f"cannot load {what} {target!r}: module {module} "
                       f"({mod.__file__}) has no {attr!r}") from None
