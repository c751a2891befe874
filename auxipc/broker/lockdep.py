"""Locks across processes, and a lockdep for them.

The broker owns every lock that spans processes: each device's ``device_lock``
(held across probe, remove and every parent->child delivery, which are requests
to another process that complete later), the host-wide ``rtnl``, and any named
mutex a model takes (``mutex:<name>``). A lock is a FIFO of operations: the
owner runs until it is released, then the next starts; a queued operation can
be cancelled (its caller timed out or died, the device was deleted).

Every holder and waiter is a *task*: a chain of work that may cross processes
(a handler runs as the task of the call it serves, like a function call in the
kernel). Two checks, as the kernel's lockdep makes them:
- **deadlock**: a wait that would close a cycle (the holder of the lock waits,
  directly or through others, for the waiter) is refused at once with
  -EDEADLK and the chain; so is a task re-taking a lock it holds.
- **inversion**: lock classes (``device_lock``, ``rtnl``, ``mutex:x``) taken in
  both orders, ever, are reported with both chains — even when no deadlock
  happened this time.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Callable

from proto.errno import AuxError, Errno


def describe(kind: str, detail: dict) -> str:
    """One line for a lockdep report: the -EDEADLK message a waiter gets, or the inversion."""
    if kind == "deadlock":
        return f"{detail['task']} waiting for {detail['lock']} would deadlock: " + "; ".join(detail["chain"])
    old, new = detail["classes"]
    return (f"possible circular locking dependency: {detail['this']}, but earlier "
            f"{'; '.join(detail['earlier'])} ({new} -> {old})")


def lock_class(name: str) -> str:
    return name.split(":", 1)[0] if name.startswith("device_lock:") else name


class LockedOp:
    __slots__ = ("what", "task", "start", "cancel", "cancelled", "started", "peer", "stack")

    def __init__(self, what: str, start: Callable[["LockedOp"], None],
                 cancel: Callable[[str], None] | None = None, task: str = ""):
        self.what = what
        self.task = task or what
        self.start = start          # called with the lock held; must lead to Lock.release(op)
        self.cancel = cancel        # called if the op is dropped before it starts
        self.cancelled = False
        self.started = False
        self.peer = None            # the process that asked for a named lock
        self.stack = ()             # tasks suspended under this one in its process (they wait for it)


class Lock:
    __slots__ = ("name", "cls", "dep", "owner", "queue", "_kicking")

    def __init__(self, name: str, dep: "LockDep | None" = None):
        self.name, self.dep = name, dep
        self.cls = lock_class(name)
        self.owner: LockedOp | None = None
        self.queue: deque[LockedOp] = deque()
        self._kicking = False

    def run(self, op: LockedOp) -> None:
        """Queue ``op``; raises AuxError(EDEADLK) instead if waiting would deadlock."""
        if self.dep is not None:
            self.dep.wait(op.task, self, op.stack)
        self.queue.append(op)
        self._kick()

    def release(self, op: LockedOp) -> None:
        if self.owner is op:
            self.owner = None
            if self.dep is not None:
                self.dep.released(op.task, self)
            if self.queue:
                self._kick()

    def cancel_queued(self, reason: str, keep: Callable[[LockedOp], bool] = lambda op: False) -> None:
        """Drop every queued (not started) op, telling each why, except those ``keep`` spares."""
        kept: deque[LockedOp] = deque()
        while self.queue:
            op = self.queue.popleft()
            if keep(op):
                kept.append(op)
            elif not op.cancelled:
                self._drop(op, reason)
        self.queue = kept

    def cancel(self, op: LockedOp, reason: str) -> bool:
        """Drop one queued op (deadline passed); False if it already started."""
        if op.started or op.cancelled:
            return False
        self.queue.remove(op)
        self._drop(op, reason)
        return True

    def _drop(self, op: LockedOp, reason: str) -> None:
        op.cancelled = True
        if self.dep is not None:
            self.dep.stop_waiting(op.task, self)
        if op.cancel:
            op.cancel(reason)

    @property
    def busy(self) -> bool:
        return self.owner is not None

    def _kick(self) -> None:
        if self._kicking:
            return
        self._kicking = True
        try:
            while self.owner is None and self.queue:
                op = self.queue.popleft()
                if op.cancelled:
                    continue
                self.owner = op
                op.started = True
                if self.dep is not None:
                    self.dep.acquired(op.task, self)
                op.start(op)
        finally:
            self._kicking = False


class LockDep:
    def __init__(self, report: Callable[[str, dict], None] = lambda kind, detail: None):
        self.report = report
        self.held: dict[str, list[Lock]] = defaultdict(list)     # task -> locks, in order taken
        self.waiting: dict[str, Lock] = {}                        # task -> the lock it waits for
        self.order: dict[str, dict[str, str]] = defaultdict(dict)  # class -> class -> chain first seen
        self.inversions: list[dict] = []
        self.deadlocks: list[dict] = []
        self.named: dict[str, Lock] = {}

    def lock(self, name: str) -> Lock:
        """The named cross-process lock (rtnl, mutex:x), created on first use."""
        if name not in self.named:
            self.named[name] = Lock(name, self)
        return self.named[name]

    # ---- bookkeeping driven by Lock --------------------------------------------------

    def wait(self, task: str, lock: Lock, stack=()) -> None:
        if task in self.held:
            self._order(task, lock)
        if lock.owner is None and not lock.queue:
            return
        ahead = [op for op in ([lock.owner] if lock.owner else []) + list(lock.queue) if not op.cancelled]
        stuck = next((op for op in ahead if op.task in stack), None)
        if stuck is not None:
            # The holder (or one ahead in line) is a frame suspended under the waiter on the
            # same single-threaded process: it cannot run again before the waiter returns.
            detail = {"task": task, "lock": lock.name, "chain": [
                f"{lock.name} is {'held' if stuck is lock.owner else 'awaited'} by {stuck.task} ({stuck.what})",
                f"{stuck.task} is suspended under {task} in the same process"]}
            self.deadlocks.append(detail)
            self.report("deadlock", detail)
            raise AuxError(Errno.EDEADLK, describe("deadlock", detail))
        self.check(task, lock)
        self.waiting[task] = lock

    def check(self, task: str, lock: Lock) -> None:
        """Raise -EDEADLK if ``task`` waiting for ``lock`` would deadlock (records nothing)."""
        chain = self._cycle(task, lock)
        if chain is not None:
            detail = {"task": task, "lock": lock.name, "chain": chain}
            self.deadlocks.append(detail)
            self.report("deadlock", detail)
            raise AuxError(Errno.EDEADLK, describe("deadlock", detail))

    def acquired(self, task: str, lock: Lock) -> None:
        if self.waiting.get(task) is lock:
            del self.waiting[task]
        self.held[task].append(lock)

    def released(self, task: str, lock: Lock) -> None:
        locks = self.held.get(task)
        if not locks:
            return
        if locks[-1] is lock:       # the usual order: the last taken is released first
            locks.pop()
        elif lock in locks:
            locks.remove(lock)
        if not locks:
            del self.held[task]

    def stop_waiting(self, task: str, lock: Lock) -> None:
        if self.waiting.get(task) is lock:
            del self.waiting[task]

    def holds(self, task: str, name: str) -> bool:
        for lock in self.held.get(task, ()):
            if lock.name == name:
                return True
        return False

    # ---- the checks --------------------------------------------------------------------

    def _cycle(self, task: str, lock: Lock) -> list[str] | None:
        """The wait-for chain from ``lock`` back to ``task``, if waiting would close one."""
        chain: list[str] = []
        seen: set[str] = set()
        current = lock
        while current is not None and current.owner is not None:
            holder = current.owner.task
            chain.append(f"{current.name} is held by {holder} ({current.owner.what})")
            if holder == task:
                return chain
            if holder in seen:
                return None
            seen.add(holder)
            current = self.waiting.get(holder)
            if current is not None:
                chain.append(f"{holder} waits for {current.name}")
        return None

    def _order(self, task: str, lock: Lock) -> None:
        new = lock.cls
        for held in self.held.get(task, ()):
            old = held.cls
            if old == new or new in self.order[old]:
                continue
            here = f"{task} holds {held.name} and takes {lock.name}"
            back = self._path(new, old)
            self.order[old][new] = here
            if back is not None:
                detail = {"classes": [old, new], "this": here, "earlier": back}
                self.inversions.append(detail)
                self.report("inversion", detail)

    def _path(self, start: str, goal: str) -> list[str] | None:
        """Chains of a recorded order path start -> ... -> goal (None if there is none)."""
        stack = [(start, [])]
        seen = set()
        while stack:
            node, chains = stack.pop()
            if node == goal:
                return chains
            if node in seen:
                continue
            seen.add(node)
            for nxt, chain in self.order.get(node, {}).items():
                stack.append((nxt, [*chains, chain]))
        return None

