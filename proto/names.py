"""Names and versions as the bus writes them: one rule each.

An auxiliary device is named ``modname.name.id`` (``auxiliary_device_add``); a
driver's id_table entries are compared with its match name, the device name cut
at its last '.'. A schema version ``(major, minor)`` is written ``major.minor``.
"""

from __future__ import annotations


def match_name(device_name: str) -> str:
    """The name a driver's id_table is compared with: the device name cut at its last '.'."""
    return device_name.rsplit(".", 1)[0]


def device_name(modname: str, name: str, dev_id: int) -> str:
    # auxiliary_device_add formats the id with %d: ids >= 2^31 print negative.
    signed = dev_id - 2**32 if dev_id >= 2**31 else dev_id
    return f"{modname}.{name}.{signed}"


def version_str(version) -> str:
    """``(1, 2)`` -> ``'1.2'``."""
    return f"{version[0]}.{version[1]}"
