"""Play the scenario once per pattern on a real bus and keep what it recorded.

Each pattern gets a bus of its own (``Harness``): a broker, its parent model and
its driver as processes, every process loading the ``abi`` schema module. The
steps are asked of the driver through PATTERN_STEP (the control channel), each
is waited for by its outcome record, never by sleeping:

1. ``reset``  the driver asks for a reset; the parent warns it (it quiesces),
   resets, tells it the reset is done (it resumes);
2. ``link``   the link goes down and up;
3. ``dcb``    a DCB change from dcbnl under rtnl; the parent changes the traffic
   classes from a worker;
4. ``unknown`` the parent sends an event the driver was built without;
5. ``bench``  round trips of the same parent->child call (per-call cost), in turns;
6. ``crash``  the driver asks for a reset again and dies inside the warning.

``run_all`` plays them on three buses at once (the per-call cost in turns) and
returns each run's records split by step; report.py derives the figures.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from auxipc.testing.harness import Harness
from proto.errno import AuxError, Errno

SCHEMA = "auxipc.testing.patterns.abi"
STEP_TIMEOUT = 10.0
ROUNDS = 10           # the per-call cost is measured in this many turns per pattern


@dataclass(frozen=True)
class Pattern:
    key: str
    title: str
    parent: str              # module:Class of the parent model
    child: str               # module:Class of the driver
    device: str              # the device the driver binds

    def files(self) -> tuple[str, str]:
        """The implementation files (repo-relative), parent side then driver side."""
        return tuple(spec.split(":")[0].replace(".", "/") + ".py" for spec in (self.parent, self.child))


PATTERNS = (
    Pattern("notifier", "mlx5-style notifier chain", "parent.patterns.notifier:Mlx5Notifier",
            "child.patterns.notifier:Mlx5eNotifier", "mlx5n.eth.0"),
    Pattern("ops", "ice/irdma-style exported ops", "parent.patterns.ops:IceOps",
            "child.patterns.ops:IrdmaOps", "iceops.eth.0"),
    Pattern("contract", "the proposal's event contract", "parent.patterns.contract:ContractParent",
            "child.patterns.contract:ContractEth", "contract.eth.0"),
)
STEPS = ("reset", "link", "dcb", "unknown", "bench", "crash")


@dataclass
class Run:
    pattern: Pattern
    n: int
    steps: dict[str, list[dict]] = field(default_factory=dict)   # step -> the records seen during it
    setup: list[dict] = field(default_factory=list)              # the records up to the bind


def _pattern_rec(side: str, step: str, **detail):
    def pred(rec: dict) -> bool:
        d = rec.get("detail") or {}
        return (rec.get("kind") == "trace" and rec.get("action") == "PATTERN" and d.get("side") == side
                and d.get("step") == step and all(d.get(k) == v for k, v in detail.items()))
    return pred


def _bus(action: str):
    return lambda rec: rec.get("kind") == "bus" and rec.get("action") == action


# What ends each step: the parent's outcome record and what the driver must have done.
def _done(step: str) -> list:
    if step == "reset":
        return [_pattern_rec("parent", "reset", n=1), _pattern_rec("child", "resume")]
    if step == "link":
        return [_pattern_rec("parent", "link"), _pattern_rec("child", "link", up=False),
                _pattern_rec("child", "link", up=True)]
    if step == "dcb":
        return [_pattern_rec("parent", "dcb"), _pattern_rec("child", "tc", phase="after")]
    if step == "crash":
        return [_pattern_rec("parent", "reset", n=2), _pattern_rec("child", "crash"), _bus("UNBIND")]
    return [_pattern_rec("parent", step)]


class PatternBus:
    """One pattern's bus: a broker, the parent model and the driver, bound and ready;
    ``step`` plays one step and returns the records seen during it."""

    def __init__(self, pattern: Pattern, n: int, log=lambda line: None):
        from auxipc.schemas import load_catalog
        self.catalog = load_catalog([SCHEMA], use_entry_points=False)
        self.run = Run(pattern, n)
        self.log = log
        self.h = Harness(prefix="axpat-", env={"AUXIPC_SCHEMA": SCHEMA})

    def __enter__(self) -> PatternBus:
        h, pattern = self.h, self.run.pattern
        try:
            h.broker()
            h.parent(pattern.parent)
            h.child(pattern.child)
            h.until(lambda r: r.get("kind") == "bus" and r.get("action") == "BIND" and r.get("dev") == pattern.device,
                    _pattern_rec("parent", "bind"), _pattern_rec("child", "bind"), timeout=STEP_TIMEOUT)
            h.drain(0.05)
        except BaseException:
            h.__exit__(None, None, None)
            raise
        self.run.setup = h.trace()
        return self

    def __exit__(self, *exc) -> None:
        self.h.__exit__(*exc)

    def step(self, step: str, n: int = 0) -> list[dict]:
        """Ask the driver for ``step`` and wait for its outcome; AuxError naming the step if it fails."""
        h, key = self.h, self.run.pattern.key
        start = len(h.trace())
        self.log(f"{key}: {step}")
        out = h.client.send_event(self.run.pattern.device, "PATTERN_STEP", "child", {"step": step, "n": n},
                                  STEP_TIMEOUT, catalog=self.catalog)
        if out["errno"]:
            raise AuxError(-out["errno"], f"{key}: step {step}: {out['message']}")
        try:
            h.until(*_done(step), timeout=STEP_TIMEOUT)
        except AuxError as exc:
            raise AuxError(Errno.ETIMEDOUT, f"{key}: step {step} did not finish: {exc.message}") from None
        h.drain(0.05)      # what the broker publishes on another socket may come a little later
        return h.trace()[start:]


def run_all(n: int = 200, rounds: int = ROUNDS, log=lambda line: None) -> list[Run]:
    """Every pattern on a bus of its own, all up at once: the steps pattern by pattern,
    the per-call cost in ``rounds`` rounds taking turns (so that a busy moment of the
    machine does not fall on one pattern only), the crash last."""
    with contextlib.ExitStack() as stack:
        buses = [stack.enter_context(PatternBus(p, n, log)) for p in PATTERNS]
        for step in STEPS[:4]:
            for bus in buses:
                bus.run.steps[step] = bus.step(step)
        per = max(1, n // rounds)
        for r in range(rounds):
            for bus in buses[r % len(buses):] + buses[:r % len(buses)]:
                bus.run.steps.setdefault("bench", []).extend(bus.step("bench", per))
        for bus in buses:
            bus.run.steps["crash"] = bus.step("crash")
        return [bus.run for bus in buses]
