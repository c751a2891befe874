"""The scale case's models (bench/scale.py): parent ``k`` (``$AUXS_IDX``) adds
``--devices`` devices ``sck.eth.i``; driver ``k`` (``scale_drvk``) binds them and
answers RESET_WARN. Distinct names per index, so 16 of each share one bus."""

from __future__ import annotations

import os

from auxipc import AuxDriver, ChildDevice, ParentModel, handler
from proto.events import Event


def _idx() -> str:
    return os.environ.get("AUXS_IDX", "0")


class ScaleParent(ParentModel):
    def __init__(self, devices: int = 1):
        super().__init__()
        self.modname = f"sc{_idx()}"
        self.n = devices

    def probe(self) -> None:
        for i in range(self.n):
            adev = self.device("eth", i, release=lambda _adev: None)
            adev.init()
            adev.add()


class ScaleDriver(AuxDriver):
    def __init__(self):
        self.name = f"scale_drv{_idx()}"
        self.id_table = [f"sc{_idx()}.eth"]

    def probe(self, adev: ChildDevice) -> int:
        return 0

    @handler(Event.RESET_WARN)
    def reset_warn(self, adev: ChildDevice, warn) -> int:
        return 0
