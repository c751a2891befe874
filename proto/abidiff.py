"""The ABI guard (``auxipc proto diff OLD.json NEW.json``): pure comparison of two
schema dumps (``auxipc proto dump --json``, ``Catalog.describe()``).

Every difference is one ``Change``, compatible or breaking under the evolution
rules the catalog is declared with:

- event numbers are ABI: an event removed, renumbered, or a code reused by
  another name breaks; an added event is compatible;
- an event's direction, delivery (sync/async), handler context and rtnl are its
  contract: any change breaks;
- struct fields are only appended: a field removed, retyped, reordered or
  inserted before an existing one breaks; an appended field is compatible only
  with a default (an older peer's message still decodes);
- a field accepts at least what it accepted: a narrowed range, a shorter
  string, a lost enum member or choice breaks; a widened one is compatible;
  a changed default or a default dropped breaks (an older peer omits the field);
- ``since`` is history: changing it breaks, and what a new dump adds must carry
  a ``since`` later than the old schema version (a peer at the old version
  would claim to know it). A major version change breaks by definition (peers of
  different majors are never bound).

The payload struct names themselves are not on the wire (a map of field names
is): a renamed struct with the same fields is compatible, its fields compared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errno import AuxError, Errno


@dataclass(frozen=True)
class Change:
    rule: str          # a stable identifier, e.g. "event-removed", "range-narrowed"
    where: str         # "SET_MAC", "SET_MAC.payload.addr", "schema"
    message: str
    breaking: bool

    def describe(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{'BREAKING' if self.breaking else 'ok':<8} {self.where}: {self.message}"


def _v(version) -> tuple[int, int]:
    return (int(version[0]), int(version[1]))


def _vs(version) -> str:
    return f"{version[0]}.{version[1]}"


def parse_version(text: Any, where: str) -> tuple[int, int]:
    try:
        major, minor = str(text).split(".")
        return (int(major), int(minor))
    except ValueError:
        raise AuxError(Errno.EINVAL, f"{where}: schema {text!r} is not major.minor") from None


def check_dump(dump: Any, where: str) -> dict:
    """Refuse what is not a schema dump (EINVAL naming ``where`` and the key)."""
    if not isinstance(dump, dict):
        raise AuxError(Errno.EINVAL, f"{where}: not a schema dump (expected an object from 'auxipc proto dump --json')")
    for key, kind in (("schema", str), ("events", list), ("structs", dict)):
        if not isinstance(dump.get(key), kind):
            raise AuxError(Errno.EINVAL, f"{where}: $.{key} missing or not a{'n' if kind is list else ''} "
                           f"{kind.__name__} (is it 'auxipc proto dump --json' output?)")
    parse_version(dump["schema"], where)
    for i, ev in enumerate(dump["events"]):
        for key in ("code", "name", "direction", "delivery", "context", "rtnl", "since", "payload"):
            if not isinstance(ev, dict) or key not in ev:
                raise AuxError(Errno.EINVAL, f"{where}: $.events[{i}].{key} missing")
    return dump


class _Differ:
    def __init__(self, old: dict, new: dict):
        self.old, self.new = old, new
        self.old_version = parse_version(old["schema"], "OLD")
        self.new_version = parse_version(new["schema"], "NEW")
        self.changes: list[Change] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, rule: str, where: str, message: str, breaking: bool) -> None:
        self.changes.append(Change(rule, where, message, breaking))

    def added_since(self, since, where: str, what: str) -> None:
        """Something new must appear after the old schema version."""
        if _v(since) <= self.old_version:
            self.add("since-not-after-old", where, f"{what} says since {_vs(since)}, but schema "
                     f"{_vs(self.old_version)} did not have it: bump the version and declare it since the new one",
                     True)

    # ---- schema and events -------------------------------------------------------

    def run(self) -> list[Change]:
        o, n = self.old_version, self.new_version
        if n[0] != o[0]:
            self.add("major-changed", "schema", f"major version {o[0]} -> {n[0]}: peers of the two are never bound",
                     True)
        elif n < o:
            self.add("version-decreased", "schema", f"version {_vs(o)} -> {_vs(n)}", True)
        elif n > o:
            self.add("version-bumped", "schema", f"version {_vs(o)} -> {_vs(n)}", False)
        old_by_name = {e["name"]: e for e in self.old["events"]}
        new_by_name = {e["name"]: e for e in self.new["events"]}
        new_by_code = {int(e["code"]): e for e in self.new["events"]}
        for name, ev in old_by_name.items():
            other = new_by_name.get(name)
            if other is None:
                taken = new_by_code.get(int(ev["code"]))
                if taken is not None:
                    self.add("code-reused", name, f"code {ev['code']} now names {taken['name']}: a peer sending "
                             f"{name} reaches the wrong handler", True)
                else:
                    self.add("event-removed", name, f"event {name} (code {ev['code']}) removed: an older peer "
                             "still sends it", True)
                continue
            self.event(name, ev, other)
        for name, ev in new_by_name.items():
            if name in old_by_name:
                continue
            reused = any(int(e["code"]) == int(ev["code"]) for e in self.old["events"])
            if not reused:
                self.add("event-added", name, f"event {name} added (code {ev['code']})", False)
                self.added_since(ev["since"], name, f"event {name}")
        return self.changes

    def event(self, name: str, old: dict, new: dict) -> None:
        if int(old["code"]) != int(new["code"]):
            self.add("event-renumbered", name, f"code {old['code']} -> {new['code']}: event numbers are ABI", True)
        for key, rule in (("direction", "direction-changed"), ("delivery", "delivery-changed"),
                          ("context", "context-changed"), ("rtnl", "rtnl-changed")):
            if old[key] != new[key]:
                self.add(rule, name, f"{key} {old[key]} -> {new[key]}", True)
        if _v(old["since"]) != _v(new["since"]):
            self.add("since-changed", name, f"since {_vs(old['since'])} -> {_vs(new['since'])}", True)
        self.struct_pair(old["payload"], new["payload"], f"{name}.payload")
        if old["delivery"] == new["delivery"] == "sync":
            self.struct_pair(old.get("reply") or "Empty", new.get("reply") or "Empty", f"{name}.reply")

    # ---- structs and fields ------------------------------------------------------

    def fields_of(self, dump: dict, struct: str) -> list[dict]:
        return (dump["structs"].get(struct) or {}).get("fields", [])

    def struct_pair(self, old: str, new: str, where: str) -> None:
        if old != new:
            self.add("struct-renamed", where, f"struct {old} -> {new}: the wire carries field names, so "
                     "compatible if the fields are (compared below); the C type is renamed", False)
        if (old, new) in self._seen:
            return        # compared once, under the first event that uses the pair
        self._seen.add((old, new))
        self.fields(self.fields_of(self.old, old), self.fields_of(self.new, new), where)

    def fields(self, old: list[dict], new: list[dict], where: str) -> None:
        new_by = {f["name"]: f for f in new}
        old_names = [f["name"] for f in old]
        common = [f["name"] for f in new if f["name"] in set(old_names)]
        for f in old:
            if f["name"] not in new_by:
                self.add("field-removed", f"{where}.{f['name']}", "field removed: an older peer still sends "
                         "it and a newer one no longer fills it", True)
        if common != [n for n in old_names if n in new_by]:
            self.add("field-reordered", where, f"fields reordered: {', '.join(n for n in old_names if n in new_by)}"
                     f" -> {', '.join(common)} (the C struct layout changes)", True)
        last_common = max((i for i, f in enumerate(new) if f["name"] in set(old_names)), default=-1)
        for i, f in enumerate(new):
            if f["name"] in set(old_names):
                continue
            at = f"{where}.{f['name']}"
            if i < last_common:
                self.add("field-inserted", at, f"field inserted before {new[last_common]['name']}: fields are "
                         "only appended (the C struct layout changes)", True)
            if "default" not in f:
                self.add("field-added-required", at, "new field without a default: an older peer's message "
                         "lacks it and no longer decodes", True)
            elif i >= last_common:
                self.add("field-added", at, f"optional field appended (default {f['default']!r})", False)
            self.added_since(f.get("since", [0, 0]), at, "field")
        for f in old:
            if f["name"] in new_by:
                self.field(f, new_by[f["name"]], f"{where}.{f['name']}")

    def field(self, old: dict, new: dict, at: str, item: bool = False) -> None:
        if old["type"] != new["type"]:
            self.add("field-retyped", at, f"type {old['type']} -> {new['type']}", True)
            return
        if not item:
            if _v(old.get("since", [0, 0])) != _v(new.get("since", [0, 0])):
                self.add("since-changed", at, f"since {_vs(old['since'])} -> {_vs(new['since'])}", True)
            if "default" in old and "default" not in new:
                self.add("default-removed", at, "the default is gone: an older peer that omits the field "
                         "no longer decodes", True)
            elif "default" not in old and "default" in new:
                self.add("default-added", at, f"now optional (default {new['default']!r})", False)
            elif "default" in old and old["default"] != new["default"]:
                self.add("default-changed", at, f"default {old['default']!r} -> {new['default']!r}: a peer "
                         "that omits the field now means something else", True)
        kind = old["type"]
        if kind == "int":
            self.int_range(old, new, at)
        elif kind in ("str", "bytes", "array"):
            if kind != "str" and (old.get("size", old.get("length")) != new.get("size", new.get("length"))):
                what = "size" if kind == "bytes" else "length"
                self.add("field-retyped", at, f"fixed {what} {old.get(what)} -> {new.get(what)}", True)
            self.bound(old["max_len"], new["max_len"], at, "max_len")
            if kind == "array":
                if old.get("total") != new.get("total"):
                    narrowed = new.get("total") is not None
                    self.add("range-narrowed" if narrowed else "range-widened", at,
                             f"items sum to {old.get('total')} -> {new.get('total')}", narrowed)
                self.field(old["item"], new["item"], f"{at}[]", item=True)
        elif kind == "enum":
            if old["enum"] != new["enum"]:
                self.add("enum-renamed", at, f"enum {old['enum']} -> {new['enum']} (members compared)", False)
            om, nm = old["members"], new["members"]
            for member, value in om.items():
                if member not in nm:
                    self.add("enum-member-removed", at, f"{old['enum']}.{member} ({value}) removed", True)
                elif nm[member] != value:
                    self.add("enum-member-renumbered", at, f"{old['enum']}.{member} {value} -> {nm[member]}", True)
            for member, value in nm.items():
                if member not in om:
                    self.add("enum-member-added", at, f"{new['enum']}.{member} = {value} added", False)
        elif kind == "struct":
            self.struct_pair(old["struct"], new["struct"], at)

    def int_range(self, old: dict, new: dict, at: str) -> None:
        oc, nc = set(old.get("choices", ())), set(new.get("choices", ()))
        if oc or nc:
            lost = sorted(oc - nc) if nc else []
            if nc and not oc:
                self.add("range-narrowed", at, f"now restricted to {sorted(nc)}", True)
            elif lost:
                self.add("range-narrowed", at, f"choices {', '.join(map(str, lost))} dropped", True)
            elif (nc - oc) or not nc:
                self.add("range-widened", at, "choices " + (f"{', '.join(map(str, sorted(nc - oc)))} added"
                                                            if nc else "no longer restricted"), False)
        lo, hi, nlo, nhi = old["min"], old["max"], new["min"], new["max"]
        if (lo, hi) == (nlo, nhi):
            return
        narrowed = nlo > lo or nhi < hi
        grown = _ctype(nlo, nhi) != _ctype(lo, hi)
        note = f"; the C type {_ctype(lo, hi)} -> {_ctype(nlo, nhi)}" if grown else ""
        self.add("range-narrowed" if narrowed else "range-widened", at,
                 f"range {lo}..{hi} -> {nlo}..{nhi}" + ("" if narrowed else note), narrowed)

    def bound(self, old: int, new: int, at: str, what: str) -> None:
        if new < old:
            self.add("range-narrowed", at, f"{what} {old} -> {new}", True)
        elif new > old:
            self.add("range-widened", at, f"{what} {old} -> {new}", False)


def _ctype(lo: int, hi: int) -> str:
    if lo >= 0:
        return next((f"u{b}" for b in (8, 16, 32, 64) if hi < 2**b), "u64")
    return next((f"s{b}" for b in (8, 16, 32) if -(2 ** (b - 1)) <= lo and hi < 2 ** (b - 1)), "s64")


def diff(old: dict, new: dict) -> list[Change]:
    """Every change from ``old`` to ``new`` (schema dumps), breaking ones flagged."""
    return _Differ(check_dump(old, "OLD"), check_dump(new, "NEW")).run()


def summary(changes: list[Change]) -> dict:
    breaking = [c for c in changes if c.breaking]
    return {"breaking": len(breaking), "compatible": len(changes) - len(breaking),
            "changes": [c.describe() for c in changes]}


def render(changes: list[Change], old_schema: str, new_schema: str) -> str:
    if not changes:
        return f"schema {old_schema} -> {new_schema}: no changes\n"
    n = sum(c.breaking for c in changes)
    lines = [str(c) for c in sorted(changes, key=lambda c: not c.breaking)]
    verdict = f"{n} breaking" if n else "compatible"
    return "\n".join([f"schema {old_schema} -> {new_schema}: {len(changes)} changes, {verdict}", *lines]) + "\n"
