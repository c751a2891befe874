"""Scenario files (TOML): the processes to start and a script of steps.

::

    name = "model-a-basics"
    [[process]]                 # started in order, after a broker, in a fresh runtime dir
    name = "ixd"                # unique; "broker" is reserved for the broker
    role = "parent"             # parent | child
    model = "ixd"               # parent: --model (built-in or module:Class); devices = N
    [[process]]
    name = "eth"
    role = "child"
    driver = "idpf_eth"         # child: a string or a list
    [[step]]
    wait = { bound = "ixd.eth.0", timeout = 10 }
    [[step]]
    send = { device = "ixd.eth.0", event = "SET_MAC", from = "child", payload = { addr = "02:00:00:00:00:01" } }
    expect = { errno = 0, reply = { filter_id = 0 } }
    [[step]]
    kill = { process = "eth", signal = "KILL" }
    expect_uevent = { action = "UNBIND", dev = "ixd.eth.0", timeout = 5 }

A step has at most one action — ``wait``, ``send``, ``kill`` (TERM/KILL/STOP/CONT/
INT/HUP), ``stop`` (SIGTERM and wait for the exit), ``start`` (start a stopped or
killed process again) — and expectations: ``expect`` (the result of ``send``:
``errno``, ``error``, ``message_contains``, ``reply`` as a subset; a ``send``
without ``expect`` expects errno 0), ``expect_uevent`` (a bus notification
during the step: ``action``, ``dev``, ``driver``, ``detail`` subset) and
``expect_trace`` (any trace record during the step, by subset: ``kind``,
``event``, ``errno``, ...). Both take one table or a list of tables, each with
its own ``timeout`` (default 5 s). ``name`` labels a step in the report.

Parsing is separate from running (``scenario_run``). Unknown keys are kept and
reported as warnings, so files written for a newer auxipc still run.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from auxipc.faults import SIGNALS
from auxipc.observe.conditions import CONDITIONS
from proto.errno import AuxError, Errno, errno_name

ACTIONS = ("wait", "send", "kill", "stop", "start")
DEFAULT_TIMEOUT = 5.0


@dataclass
class ProcessSpec:
    """A ``[[process]]`` table: one parent or child process."""

    name: str
    role: str                       # parent | child
    model: str | None = None        # parent
    devices: int | None = None      # parent: --devices
    drivers: list[str] = field(default_factory=list)   # child
    args: list[str] = field(default_factory=list)      # extra command-line arguments
    extra: dict = field(default_factory=dict)          # unknown keys, kept for newer runners

    def argv(self) -> list[str]:
        """``auxipc`` arguments (without --runtime-dir)."""
        if self.role == "parent":
            out = ["parent", "--model", self.model]
            if self.devices is not None:
                out += ["--devices", str(self.devices)]
        else:
            out = ["child", *(x for d in self.drivers for x in ("--driver", d))]
        return [*out, *self.args]


@dataclass
class WaitSpec:
    cond: str
    arg: str | None
    timeout: float = 10.0

    def describe(self) -> str:
        return f"wait {self.cond}" + (f" {self.arg}" if self.arg else "")


@dataclass
class SendSpec:
    device: str
    event: str
    side: str
    payload: dict = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT

    def describe(self) -> str:
        return f"send {self.event} on {self.device} from {self.side}"


@dataclass
class SignalSpec:
    """``kill``: send a signal to a process (fault injection)."""

    process: str
    signal: str = "TERM"

    def describe(self) -> str:
        return f"kill {self.process} (SIG{self.signal})"


@dataclass
class StopSpec:
    process: str
    timeout: float = DEFAULT_TIMEOUT

    def describe(self) -> str:
        return f"stop {self.process}"


@dataclass
class StartSpec:
    process: str
    timeout: float = 15.0

    def describe(self) -> str:
        return f"start {self.process}"


@dataclass
class ExpectResult:
    """``expect``: what the ``send`` of the same step must answer."""

    errno: int | None = None            # 0 or an errno (sign ignored)
    error: str | None = None            # an errno name, e.g. "EINVAL"
    message_contains: str | None = None
    reply: dict | None = None           # subset of the reply payload

    def check(self, out: dict) -> list[str]:
        """What does not match ``out`` ({errno, error, message, reply}); empty when it matches."""
        problems = []
        got = abs(out.get("errno") or 0)
        got_name = errno_name(got) if got else "0"
        if self.errno is not None and abs(self.errno) != got:
            want = errno_name(self.errno) if self.errno else "0"
            problems.append(f"expected errno {want}, got {got_name}")
        if self.error is not None and self.error.upper() != (out.get("error") or "0").upper():
            problems.append(f"expected error {self.error}, got {got_name}")
        if self.message_contains is not None and self.message_contains not in (out.get("message") or ""):
            problems.append(f"message {out.get('message')!r} does not contain {self.message_contains!r}")
        if self.reply is not None:
            miss = subset_mismatch(self.reply, out.get("reply"), "reply")
            if miss:
                problems.append(miss)
        return problems


@dataclass
class ExpectRecord:
    """``expect_uevent`` / ``expect_trace``: a trace record that must be seen during the step."""

    fields: dict
    timeout: float = DEFAULT_TIMEOUT

    def matches(self, rec: dict) -> bool:
        return subset_mismatch(self.fields, rec, "record") is None

    def describe(self) -> str:
        f = dict(self.fields)
        if f.get("kind") == "bus":
            f.pop("kind")
            head = " ".join(str(f.pop(k)) for k in ("action", "dev", "driver") if k in f)
            return "uevent " + " ".join(x for x in (head, *(f"{k}={v}" for k, v in f.items())) if x)
        return "record " + " ".join(f"{k}={v}" for k, v in f.items())


@dataclass
class Step:
    index: int
    name: str | None = None
    action: WaitSpec | SendSpec | SignalSpec | StopSpec | StartSpec | None = None
    expect: ExpectResult | None = None
    records: list[ExpectRecord] = field(default_factory=list)

    def describe(self) -> str:
        parts = [self.action.describe()] if self.action else []
        parts += [r.describe() for r in self.records]
        text = "; ".join(parts) or "(nothing)"
        return f"{self.name}: {text}" if self.name else text


@dataclass
class Scenario:
    name: str
    path: str
    processes: list[ProcessSpec]
    steps: list[Step]
    warnings: list[str] = field(default_factory=list)


def subset_mismatch(want, got, path: str) -> str | None:
    """None if ``want`` is a subset of ``got`` (dicts recursively, errnos by value), else why not."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"{path}: expected a map, got {got!r}"
        for k, v in want.items():
            if k not in got:
                return f"{path}.{k}: missing (have {', '.join(map(str, got)) or 'nothing'})"
            miss = subset_mismatch(v, got[k], f"{path}.{k}")
            if miss:
                return miss
        return None
    if path.endswith(".errno") and isinstance(want, int) and isinstance(got, int):
        return None if abs(want) == abs(got) else f"{path}: expected {want}, got {got}"
    if isinstance(want, list) and isinstance(got, (list, tuple)):
        return None if list(want) == list(got) else f"{path}: expected {want!r}, got {list(got)!r}"
    if want != got:
        return f"{path}: expected {want!r}, got {got!r}"
    return None


# ---- parsing -------------------------------------------------------------------------------

class _Table:
    """Reads one TOML table, naming each key's path in errors and collecting unknown keys."""

    def __init__(self, data, path: str, warnings: list[str]):
        if not isinstance(data, dict):
            raise AuxError(Errno.EINVAL, f"{path}: expected a table, got {type(data).__name__}")
        self.data, self.path, self.warnings, self.used = data, path, warnings, set()

    def get(self, key: str, types, default=None, required: bool = False):
        self.used.add(key)
        if key not in self.data:
            if required:
                raise AuxError(Errno.EINVAL, f"{self.path}.{key}: required")
            return default
        value = self.data[key]
        if types is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, types) or (isinstance(value, bool) and types in (int, float)):
            names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise AuxError(Errno.EINVAL, f"{self.path}.{key}: expected {names}, got {value!r}")
        return value

    def timeout(self, default: float) -> float:
        t = self.get("timeout", float, default)
        if not 0 < t <= 3600:
            raise AuxError(Errno.EINVAL, f"{self.path}.timeout: expected 0 < seconds <= 3600, got {t}")
        return t

    def rest(self) -> dict:
        extra = {k: v for k, v in self.data.items() if k not in self.used}
        for k in extra:
            self.warnings.append(f"{self.path}.{k}: unknown key, ignored")
        return extra


def _process(data, i: int, warnings: list[str], names: set) -> ProcessSpec:
    t = _Table(data, f"process[{i}]", warnings)
    name = t.get("name", str, required=True)
    if name in names or name == "broker":
        raise AuxError(Errno.EINVAL, f"{t.path}.name: {name!r} is " + ("used twice" if name in names
                                                                        else "reserved for the broker"))
    names.add(name)
    role = t.get("role", str, required=True)
    if role not in ("parent", "child"):
        raise AuxError(Errno.EINVAL, f"{t.path}.role: expected 'parent' or 'child', got {role!r}")
    spec = ProcessSpec(name, role)
    if role == "parent":
        spec.model = t.get("model", str, required=True)
        spec.devices = t.get("devices", int)
    else:
        drv = t.get("driver", (str, list), required=True)
        spec.drivers = [drv] if isinstance(drv, str) else drv
        if not spec.drivers or not all(isinstance(d, str) and d for d in spec.drivers):
            raise AuxError(Errno.EINVAL, f"{t.path}.driver: expected a driver name or a list of them")
    args = t.get("args", list, [])
    if not all(isinstance(a, str) for a in args):
        raise AuxError(Errno.EINVAL, f"{t.path}.args: expected a list of strings")
    spec.args = args
    spec.extra = t.rest()
    return spec


def _records(value, path: str, warnings: list[str], kind: str | None) -> list[ExpectRecord]:
    items = value if isinstance(value, list) else [value]
    out = []
    for j, item in enumerate(items):
        p = f"{path}[{j}]" if isinstance(value, list) else path
        t = _Table(item, p, warnings)
        timeout = t.timeout(DEFAULT_TIMEOUT)
        fields = {k: v for k, v in item.items() if k != "timeout"}
        if kind == "bus":
            allowed = {"action", "dev", "driver", "detail", "seq"}
            for k in fields:
                if k not in allowed:
                    raise AuxError(Errno.EINVAL, f"{p}.{k}: unknown key (a uevent has "
                                   f"{', '.join(sorted(allowed))})")
            if "action" not in fields:
                raise AuxError(Errno.EINVAL, f"{p}.action: required")
            fields = {"kind": "bus", **fields}
        elif not fields:
            raise AuxError(Errno.EINVAL, f"{p}: give at least one field to match (kind, event, dev, ...)")
        if "errno" in fields and not isinstance(fields["errno"], int):
            raise AuxError(Errno.EINVAL, f"{p}.errno: expected an int")
        out.append(ExpectRecord(fields, timeout))
    return out


def _step(data, i: int, warnings: list[str], processes: set) -> Step:
    t = _Table(data, f"step[{i}]", warnings)
    step = Step(index=i + 1, name=t.get("name", str))
    present = [a for a in ACTIONS if a in data]
    if len(present) > 1:
        raise AuxError(Errno.EINVAL, f"{t.path}: one action per step, got {', '.join(present)}")
    action = present[0] if present else None
    if action == "wait":
        w = _Table(t.get("wait", dict), f"{t.path}.wait", warnings)
        conds = [c for c in CONDITIONS if c in w.data]
        if len(conds) != 1:
            raise AuxError(Errno.EINVAL, f"{w.path}: give exactly one of {', '.join(CONDITIONS)}")
        cond = conds[0]
        needs = CONDITIONS[cond][0]
        arg = w.get(cond, str if needs else bool)
        step.action = WaitSpec(cond, arg if needs else None, w.timeout(10.0))
        w.rest()
    elif action == "send":
        s = _Table(t.get("send", dict), f"{t.path}.send", warnings)
        side = s.get("from", str, required=True)
        if side not in ("parent", "child"):
            raise AuxError(Errno.EINVAL, f"{s.path}.from: expected 'parent' or 'child', got {side!r}")
        step.action = SendSpec(s.get("device", str, required=True), s.get("event", str, required=True), side,
                               s.get("payload", dict, {}), s.timeout(DEFAULT_TIMEOUT))
        s.rest()
    elif action in ("kill", "stop", "start"):
        raw = t.get(action, (dict, str))
        k = _Table({"process": raw} if isinstance(raw, str) else raw, f"{t.path}.{action}", warnings)
        proc = k.get("process", str, required=True)
        if proc not in processes and not (proc == "broker" and action == "kill"):
            raise AuxError(Errno.EINVAL, f"{k.path}.process: no process named {proc!r} "
                           f"(processes: {', '.join(sorted(processes)) or 'none'})")
        if action == "kill":
            sig = k.get("signal", str, "TERM").upper().removeprefix("SIG")
            if sig not in SIGNALS:
                raise AuxError(Errno.EINVAL, f"{k.path}.signal: expected one of {', '.join(SIGNALS)}, got {sig!r}")
            step.action = SignalSpec(proc, sig)
        elif action == "stop":
            step.action = StopSpec(proc, k.timeout(DEFAULT_TIMEOUT))
        else:
            step.action = StartSpec(proc, k.timeout(15.0))
        k.rest()
    if "expect" in data:
        if action != "send":
            raise AuxError(Errno.EINVAL, f"{t.path}.expect: checks the result of a send in the same step")
        e = _Table(t.get("expect", dict), f"{t.path}.expect", warnings)
        errno = e.get("errno", int)
        error = e.get("error", str)
        if error is not None and error.upper() not in ("0", "OK") and not error.upper().startswith("E"):
            raise AuxError(Errno.EINVAL, f"{e.path}.error: expected an errno name like 'EINVAL', got {error!r}")
        step.expect = ExpectResult(errno, error, e.get("message_contains", str), e.get("reply", dict))
        e.rest()
    elif action == "send":
        step.expect = ExpectResult(errno=0)
    for key, kind in (("expect_uevent", "bus"), ("expect_trace", None)):
        if key in data:
            step.records += _records(t.get(key, (dict, list)), f"{t.path}.{key}", warnings, kind)
    if step.action is None and not step.records:
        raise AuxError(Errno.EINVAL, f"{t.path}: a step needs an action ({', '.join(ACTIONS)}) "
                       "or an expect_uevent/expect_trace")
    t.rest()
    return step


def parse(text: str, path: str = "<scenario>") -> Scenario:
    """A ``Scenario`` from TOML text; errors (``-EINVAL``) name the file and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AuxError(Errno.EINVAL, f"{path}: not valid TOML: {exc}") from None
    warnings: list[str] = []
    try:
        top = _Table(data, "$", warnings)
        name = top.get("name", str, Path(path).stem)
        procs_raw = top.get("process", list, [])
        steps_raw = top.get("step", list, [])
        names: set = set()
        processes = [_process(p, i, warnings, names) for i, p in enumerate(procs_raw)]
        steps = [_step(s, i, warnings, names) for i, s in enumerate(steps_raw)]
        top.rest()
    except AuxError as exc:
        raise AuxError(Errno.EINVAL, f"{path}: {exc.message}") from None
    if not steps:
        warnings.append("no [[step]]: only the processes are started and stopped")
    return Scenario(name, path, processes, steps, [w.replace("$.", "") for w in warnings])


def load(path) -> Scenario:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AuxError(Errno.ENOENT, f"cannot read scenario {path}: {exc.strerror}") from None
    return parse(text, str(path))
