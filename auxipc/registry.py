"""Names for the parent models and child drivers the CLI can start.

Built-ins are listed here; a user's own is given as ``package.module:Class``.
"""

from __future__ import annotations

import importlib

from proto.errno import AuxError, Errno

MODELS = {"ixd": "parent.ixd:Ixd", "soak": "parent.soak:SoakParent",
          # hardware-backed parents (parent/nic.py): Model B, and two more shapes of the same contract
          "idpf": "parent.idpf:Idpf", "mlx5_core": "parent.mlx5:Mlx5Core", "ice": "parent.ice:Ice"}
DRIVERS = {"idpf_eth": "child.idpf_eth:IdpfEth", "soak_a": "child.soak:SoakDriver", "soak_b": "child.soak:SoakDriverB",
           "idpf_prime": "child.idpf_eth:IdpfPrime", "mlx5e": "child.netdev:Mlx5Eth",
           "irdma": "child.rdma:Irdma", "mlx5_ib": "child.rdma:Mlx5Ib", "mlx5_vdpa": "child.vnet:Mlx5Vnet"}


def load(spec: str, table: dict, what: str):
    target = table.get(spec, spec)
    if ":" not in target:
        raise AuxError(Errno.ENOENT, f"unknown {what} {spec!r} (built-in: {', '.join(sorted(table))}; "
                       "or give module:Class)")
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise AuxError(Errno.ENOENT, f"cannot load {what} {target!r}: {exc}") from None
