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
5. ``bench``  N round trips of the same parent->child call (per-call cost);
6. ``crash``  the driver asks for a reset again and dies inside the warning.

``run_pattern`` returns the run's records split by step; report.py derives the
figures from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from auxipc.testing.harness import Harness
from proto.errno import AuxError, Errno

SCHEMA = "auxipc.testing.patterns.abi"
STEP_TIMEOUT = 10.0


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


def run_pattern(pattern: Pattern, n: int = 200, log=lambda line: None) -> Run:
    """Play every step on a fresh bus; the records of each step. Raises AuxError
    (ETIMEDOUT naming the step) if a step does not finish."""
    from auxipc.schemas import load_catalog
    catalog = load_catalog([SCHEMA], use_entry_points=False)
    run = Run(pattern, n)
    with Harness(prefix="axpat-", env={"AUXIPC_SCHEMA": SCHEMA}) as h:
        h.broker()
        h.parent(pattern.parent)
        h.child(pattern.child)
        h.until(lambda r: r.get("kind") == "bus" and r.get("action") == "BIND" and r.get("dev") == pattern.device,
                _pattern_rec("parent", "bind"), _pattern_rec("child", "bind"), timeout=STEP_TIMEOUT)
        h.drain(0.05)
        run.setup = h.trace()
        for step in STEPS:
            start = len(h.trace())
            log(f"{pattern.key}: {step}")
            out = h.client.send_event(pattern.device, "PATTERN_STEP", "child", {"step": step, "n": n if step == "bench" else 0},
                                      STEP_TIMEOUT, catalog=catalog)
            if out["errno"]:
                raise AuxError(-out["errno"], f"{pattern.key}: step {step}: {out['message']}")
            try:
                h.until(*_done(step), timeout=STEP_TIMEOUT)
            except AuxError as exc:
                raise AuxError(Errno.ETIMEDOUT, f"{pattern.key}: step {step} did not finish: {exc.message}") from None
            h.drain(0.05)      # what the broker publishes on another socket may come a little later
            run.steps[step] = h.trace()[start:]
    return run
