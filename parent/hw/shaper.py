"""Rate limiters on scheduling-tree nodes (net_shaper_ops.set, as ice's rate limit profiles).

A shaper has a guaranteed rate (``bw_min``), a ceiling (``bw_max``, 0 = none),
a burst size, a strict priority and a WFQ weight. The hardware checks what a
real scheduler would: rates in bits per second only (no PPS), at least
MIN_RATE when set, no more than the port speed, ``bw_min <= bw_max``, a burst
the profile can hold, priority 0..7, weight 0..200 (0 = default), and the
guaranteed rates of siblings must fit under their parent's ceiling. All
refusals are -EINVAL naming the field; PPS is -EOPNOTSUPP.
"""

from __future__ import annotations

from dataclasses import dataclass

from proto.errno import AuxError, Errno
from proto.events import NetshaperSet, ShaperMetric

MIN_RATE = 500_000          # bps: the smallest rate a profile can express (ice: 500 Kb/s)
MAX_BURST = 2 * 1024 * 1024  # bytes
MAX_PRIORITY = 7
MAX_WEIGHT = 200


@dataclass(frozen=True)
class Shaper:
    bw_min: int = 0
    bw_max: int = 0
    burst: int = 0
    priority: int = 0
    weight: int = 0


def validate(req: NetshaperSet, port_bps: int, siblings_min: int = 0, parent_max: int = 0,
             pps: bool = False) -> Shaper:
    """Check ``req`` against the hardware; ``siblings_min`` is the sum of the other
    children's guaranteed rates under the same parent, ``parent_max`` its ceiling (0: the port)."""
    if req.metric is ShaperMetric.PPS and not pps:
        raise AuxError(Errno.EOPNOTSUPP, "$.payload.metric: this scheduler shapes in bits per second only")
    for name in ("bw_min", "bw_max"):
        rate = getattr(req, name)
        if rate and rate < MIN_RATE:
            raise AuxError(Errno.EINVAL, f"$.payload.{name}: {rate} bps is below the hardware's minimum "
                           f"{MIN_RATE} bps")
        if rate > port_bps:
            raise AuxError(Errno.EINVAL, f"$.payload.{name}: {rate} bps exceeds the port speed {port_bps} bps")
    if req.bw_max and req.bw_min > req.bw_max:
        raise AuxError(Errno.EINVAL, f"$.payload.bw_min: {req.bw_min} bps is above bw_max {req.bw_max} bps")
    if req.burst > MAX_BURST:
        raise AuxError(Errno.EINVAL, f"$.payload.burst: {req.burst} bytes; a profile holds at most {MAX_BURST}")
    if req.priority > MAX_PRIORITY:
        raise AuxError(Errno.EINVAL, f"$.payload.priority: {req.priority} out of range 0..{MAX_PRIORITY}")
    if req.weight > MAX_WEIGHT:
        raise AuxError(Errno.EINVAL, f"$.payload.weight: {req.weight} out of range 0..{MAX_WEIGHT}")
    ceiling = parent_max or port_bps
    if req.bw_min and siblings_min + req.bw_min > ceiling:
        raise AuxError(Errno.EINVAL, f"$.payload.bw_min: the guaranteed rates under this node would sum to "
                       f"{siblings_min + req.bw_min} bps, above its parent's {ceiling} bps")
    return Shaper(req.bw_min, req.bw_max, req.burst, req.priority, req.weight)
