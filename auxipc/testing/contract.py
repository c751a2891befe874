"""What the ``auxbus`` fixture fails a test on: the kinds of contract bug the bus
reports, the ``auxbus_allow`` marker's names for them, and the failure message.

Imports nothing of the bus (the plugin loads it with pytest, before any test).
A bug is a record of the broker's ``bugs`` control op (or one of its warnings of
a kind listed here): ``kind``, ``message``, ``peer`` and ``where`` (``file:line``
in the user's code when the runtime knew it).
"""

from __future__ import annotations

from collections.abc import Iterable

# kind -> what it means, in the words of the failure message
KINDS: dict[str, str] = {
    "sleep_in_atomic": "a sleeping call (a sync call, a lock, a get/put) in an atomic-context handler",
    "atomic_overrun": "an atomic-context handler ran past its time budget",
    "lock_inversion": "lockdep: two lock classes taken in both orders (a possible deadlock)",
    "deadlock": "lockdep: a lock wait that would deadlock (-EDEADLK)",
    "handler_exception": "a handler, probe or remove raised an exception",
    "probe_failed": "a probe returned an error (not -ENODEV, -ENXIO or -EPROBE_DEFER) or raised",
    "async_lost": "a receiver missed async events (a gap in their sequence)",
    "async_dropped_hwm": "the broker dropped async events for a subscriber whose queue was full",
    "ref_leak": "a reference taken with get_device() was never put",
    "devices_outlive_parent": "a parent left with its auxiliary devices still added",
    "uninit_missing": "a parent left without auxiliary_device_uninit() of its devices",
    "hung_task": "a remove() blocked past the hung-task timeout",
}

# Names for groups of kinds, also accepted by the marker.
GROUPS: dict[str, tuple[str, ...]] = {
    "lockdep": ("lock_inversion", "deadlock"),
    "async_loss": ("async_lost", "async_dropped_hwm"),
    "lifespan": ("devices_outlive_parent", "uninit_missing"),
}

MARKER = "auxbus_allow"
MARKER_DOC = (f"{MARKER}(*kinds): the auxbus fixture does not fail the test on these kinds of contract bug "
              f"(kinds: {', '.join(KINDS)}; groups: {', '.join(GROUPS)})")


class UnknownKind(ValueError):
    pass


def allowed(names: Iterable[object]) -> set[str]:
    """The kinds ``names`` allow (a kind or a group each); UnknownKind naming the valid ones."""
    found: set[str] = set()
    for name in names:
        if name in KINDS:
            found.add(name)                 # type: ignore[arg-type]
        elif name in GROUPS:
            found.update(GROUPS[name])      # type: ignore[index]
        else:
            raise UnknownKind(f"@pytest.mark.{MARKER}: unknown kind {name!r}; valid kinds: {', '.join(KINDS)}; "
                              f"groups: {', '.join(GROUPS)}")
    return found


def bugs_of(answer: dict) -> list[dict]:
    """The bugs in an answer of the control op ``bugs``: its bugs, and its warnings of a
    kind listed here, in the order they were seen."""
    found = [*answer.get("bugs", ()), *(w for w in answer.get("warnings", ()) if w.get("kind") in KINDS)]
    found.sort(key=lambda b: b.get("ts", 0))
    return found


def failure(bugs: list[dict], left_behind: Iterable[str] = ()) -> str:
    """The fixture's failure message, pytest-style: per bug, ``file:line: kind`` (the
    user's code), then who reported it and what it said; then what was left behind."""
    lines: list[str] = []
    # The same bug at the same place, again (an event sent twice): shown once, counted.
    seen: dict[tuple, int] = {}
    for bug in bugs:
        key = (bug.get("kind", "?"), bug.get("where") or "", bug.get("peer") or "", bug.get("message", ""))
        seen[key] = seen.get(key, 0) + 1
    if bugs:
        lines.append(f"auxbus: the bus saw {len(bugs)} contract bug(s) during the test "
                     f"(to allow a kind: @pytest.mark.{MARKER}(\"KIND\"))")
        for (kind, where, peer, message), n in seen.items():
            lines += ["", f"{where or '(no user frame known)'}: {kind}: {KINDS.get(kind, '')}"
                          + (f" (x{n})" if n > 1 else "")]
            lines.append(f"    {peer + ' reported' if peer else 'the bus reported'}: {message}")
    left = list(left_behind)
    if left:
        lines += ["", "auxbus teardown: " + "; ".join(left)]
    return "\n".join(lines).lstrip("\n")
