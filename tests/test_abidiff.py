"""The ABI guard: every evolution rule of proto/abidiff.py, on mutations of the real
catalog's dump, and ``auxipc proto diff``'s output and exit codes."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner

from auxipc.cli.main import main
from proto import abidiff
from proto.errno import AuxError, Errno
from proto.events import CATALOG

BASE = CATALOG.describe()


def _ev(d: dict, name: str) -> dict:
    return next(e for e in d["events"] if e["name"] == name)


def _field(d: dict, struct: str, name: str) -> dict:
    return next(f for f in d["structs"][struct]["fields"] if f["name"] == name)


def _changed(mutate, bump: str | None = "1.1") -> list[abidiff.Change]:
    new = copy.deepcopy(BASE)
    if bump:
        new["schema"] = bump
    mutate(new)
    return [c for c in abidiff.diff(BASE, new) if c.rule != "version-bumped"]


def _only(changes, rule: str, breaking: bool, where: str | None = None) -> abidiff.Change:
    assert [c.rule for c in changes] == [rule], changes
    (c,) = changes
    assert c.breaking is breaking
    if where is not None:
        assert c.where == where
    return c


def test_identical_dumps_have_no_changes():
    assert abidiff.diff(BASE, copy.deepcopy(BASE)) == []


# ---- events ------------------------------------------------------------------------

def test_removed_event_breaks():
    c = _only(_changed(lambda d: d["events"].remove(_ev(d, "SET_MAC"))), "event-removed", True, "SET_MAC")
    assert "code 76" in c.message


def test_renumbered_event_breaks():
    c = _only(_changed(lambda d: _ev(d, "SET_MAC").update(code=78)), "event-renumbered", True, "SET_MAC")
    assert "76 -> 78" in c.message


def test_reused_code_breaks():
    def reuse(d):
        _ev(d, "POST_CONFIG").update(name="POST_CONFIG2", since=[1, 1])
    c = _only(_changed(reuse), "code-reused", True, "POST_CONFIG")
    assert "POST_CONFIG2" in c.message


@pytest.mark.parametrize("key,value,rule", [
    ("direction", "parent->child", "direction-changed"),
    ("delivery", "async", "delivery-changed"),
    ("context", "atomic", "context-changed"),
    ("rtnl", False, "rtnl-changed"),
])
def test_changed_event_contract_breaks(key, value, rule):
    changes = _changed(lambda d: _ev(d, "SET_MAC").update({key: value}))
    assert changes[0].rule == rule and changes[0].breaking and changes[0].where == "SET_MAC"


def test_changed_since_breaks():
    _only(_changed(lambda d: _ev(d, "SET_MAC").update(since=[1, 1])), "since-changed", True, "SET_MAC")


def test_added_event_is_compatible():
    def add(d):
        d["events"].append(dict(_ev(d, "POST_CONFIG"), code=78, name="NEW_EVENT", since=[1, 1]))
    _only(_changed(add), "event-added", False, "NEW_EVENT")


def test_added_event_must_come_after_the_old_version():
    def add(d):
        d["events"].append(dict(_ev(d, "POST_CONFIG"), code=78, name="NEW_EVENT", since=[1, 0]))
    changes = _changed(add)
    assert [(c.rule, c.breaking) for c in changes] == [("event-added", False), ("since-not-after-old", True)]


@pytest.mark.parametrize("old,new,rule,breaking", [("1.0", "2.0", "major-changed", True),
                                                   ("1.1", "1.0", "version-decreased", True),
                                                   ("1.0", "1.1", "version-bumped", False)])
def test_version_changes(old, new, rule, breaking):
    a, b = copy.deepcopy(BASE), copy.deepcopy(BASE)
    a["schema"], b["schema"] = old, new
    (c,) = abidiff.diff(a, b)
    assert (c.rule, c.breaking, c.where) == (rule, breaking, "schema")


# ---- fields ------------------------------------------------------------------------

def test_removed_field_breaks():
    def drop(d):
        d["structs"]["SetMacReply"]["fields"].pop()
    _only(_changed(drop), "field-removed", True, "SET_MAC.reply.filter_id")


def test_reordered_fields_break():
    def swap(d):
        f = d["structs"]["MtuChangeBefore"]["fields"]
        f[0], f[1] = f[1], f[0]
    c = _only(_changed(swap), "field-reordered", True, "BEFORE_MTU_CHANGE.payload")
    assert "old_mtu, new_mtu -> new_mtu, old_mtu" in c.message


def test_retyped_field_breaks():
    _only(_changed(lambda d: _field(d, "MtuChangeAfter", "mtu").update(type="str", max_len=8)),
          "field-retyped", True, "AFTER_MTU_CHANGE.payload.mtu")


def test_resized_bytes_break():
    _only(_changed(lambda d: _field(d, "SetMac", "addr").update(size=8)), "field-retyped", True,
          "SET_MAC.payload.addr")


def test_appended_optional_field_is_compatible():
    def add(d):
        d["structs"]["SetMac"]["fields"].append({"name": "flags", "type": "int", "since": [1, 1], "doc": "",
                                                 "default": 0, "min": 0, "max": 255})
    _only(_changed(add), "field-added", False, "SET_MAC.payload.flags")


def test_appended_required_field_breaks():
    def add(d):
        d["structs"]["SetMac"]["fields"].append({"name": "flags", "type": "int", "since": [1, 1], "doc": "",
                                                 "min": 0, "max": 255})
    _only(_changed(add), "field-added-required", True, "SET_MAC.payload.flags")


def test_inserted_field_breaks():
    def add(d):
        d["structs"]["MtuChangeBefore"]["fields"].insert(0, {"name": "port", "type": "int", "since": [1, 1],
                                                             "doc": "", "default": 0, "min": 0, "max": 7})
    _only(_changed(add), "field-inserted", True, "BEFORE_MTU_CHANGE.payload.port")


def test_added_field_must_come_after_the_old_version():
    def add(d):
        d["structs"]["SetMac"]["fields"].append({"name": "flags", "type": "int", "since": [1, 0], "doc": "",
                                                 "default": 0, "min": 0, "max": 255})
    changes = _changed(add)
    assert [(c.rule, c.breaking) for c in changes] == [("field-added", False), ("since-not-after-old", True)]


def test_narrowed_and_widened_int_ranges():
    c = _only(_changed(lambda d: _field(d, "Qos", "num_tc").update(max=4)), "range-narrowed", True,
              "AFTER_TC_CHANGE.payload.num_tc")
    assert "1..8 -> 1..4" in c.message
    c = _only(_changed(lambda d: _field(d, "Qos", "num_tc").update(max=16)), "range-widened", False)
    assert "1..16" in c.message
    c = _only(_changed(lambda d: _field(d, "Qos", "num_tc").update(max=1000)), "range-widened", False)
    assert "the C type u8 -> u16" in c.message


def test_choices():
    _only(_changed(lambda d: _field(d, "VlanFilter", "proto").update(choices=[33024])), "range-narrowed", True)
    _only(_changed(lambda d: _field(d, "VlanFilter", "proto").update(choices=[33024, 34984, 37120])),
          "range-widened", False)
    _only(_changed(lambda d: _field(d, "MtuChangeAfter", "mtu").update(choices=[1500, 9000])), "range-narrowed",
          True)


def test_string_and_array_bounds():
    def shorter(d):
        _field(d, "Virtchnl", "buf")["max_len"] -= 1
    _only(_changed(shorter), "range-narrowed", True, "VIRTCHNL_PASSTHROUGH.payload.buf")
    _only(_changed(lambda d: _field(d, "Qos", "up2tc").update(length=16)), "field-retyped", True)
    c = _only(_changed(lambda d: _field(d, "Qos", "up2tc")["item"].update(max=3)), "range-narrowed", True,
              "AFTER_TC_CHANGE.payload.up2tc[]")
    assert "0..7 -> 0..3" in c.message
    _only(_changed(lambda d: _field(d, "Qos", "rel_bw").update(total=None)), "range-widened", False)
    _only(_changed(lambda d: _field(d, "Qos", "up2tc").update(total=8)), "range-narrowed", True)


def test_enum_members():
    def drop(d):
        del _field(d, "Qos", "pfc_mode")["members"]["DSCP"]
    _only(_changed(drop), "enum-member-removed", True, "AFTER_TC_CHANGE.payload.pfc_mode")
    _only(_changed(lambda d: _field(d, "Qos", "pfc_mode")["members"].update(DSCP=5)), "enum-member-renumbered",
          True)
    _only(_changed(lambda d: _field(d, "Qos", "pfc_mode")["members"].update(NONE=7)), "enum-member-added", False)


def test_defaults():
    _only(_changed(lambda d: _field(d, "Qos", "prio_type").pop("default")), "default-removed", True)
    _only(_changed(lambda d: _field(d, "Qos", "prio_type").update(default="STRICT")), "default-changed", True)
    _only(_changed(lambda d: _field(d, "Qos", "num_tc").update(default=1)), "default-added", False)


def test_field_since_changed_breaks():
    _only(_changed(lambda d: _field(d, "SetMac", "addr").update(since=[1, 1])), "since-changed", True)


def test_nested_struct_fields_are_compared_once():
    def narrow(d):
        _field(d, "ShaperHandle", "id")["max"] -= 1
    _only(_changed(narrow), "range-narrowed", True, "NETSHAPER_SET.payload.handle.id")


def test_renamed_struct_with_the_same_fields_is_compatible():
    def rename(d):
        d["structs"]["SetMacRequest"] = d["structs"].pop("SetMac")
        _ev(d, "SET_MAC")["payload"] = "SetMacRequest"
    _only(_changed(rename), "struct-renamed", False, "SET_MAC.payload")


def test_not_a_dump_is_refused_naming_the_key():
    with pytest.raises(AuxError) as e:
        abidiff.diff(BASE, {"schema": "1.0", "events": []})
    assert e.value.errno == Errno.EINVAL and "NEW: $.structs" in str(e.value)
    with pytest.raises(AuxError, match=r"OLD: \$\.events\[0\]\.code missing"):
        abidiff.diff({"schema": "1.0", "events": [{}], "structs": {}}, BASE)


# ---- the command ---------------------------------------------------------------------

def _write(tmp_path, name: str, d: dict) -> str:
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return str(p)


def test_cli_exit_codes_and_json(tmp_path):
    runner = CliRunner()
    dumped = runner.invoke(main, ["proto", "dump", "--json", "-o", str(tmp_path / "old.json")])
    assert dumped.exit_code == 0
    old = str(tmp_path / "old.json")
    r = runner.invoke(main, ["proto", "diff", old, old])
    assert r.exit_code == 0 and "no changes" in r.output

    compatible = copy.deepcopy(BASE)
    compatible["schema"] = "1.1"
    compatible["events"].append(dict(_ev(compatible, "POST_CONFIG"), code=78, name="NEW_EVENT", since=[1, 1]))
    r = runner.invoke(main, ["proto", "diff", old, _write(tmp_path, "compatible.json", compatible)])
    assert r.exit_code == 0, r.output
    assert "2 changes, compatible" in r.output and "NEW_EVENT: event NEW_EVENT added" in r.output

    breaking = copy.deepcopy(BASE)
    _ev(breaking, "SET_MAC")["code"] = 99
    r = runner.invoke(main, ["proto", "diff", old, _write(tmp_path, "breaking.json", breaking), "--json"])
    assert r.exit_code == 1
    out = json.loads(r.output)
    assert out["breaking"] == 1 and out["changes"][0]["rule"] == "event-renumbered"

    r = runner.invoke(main, ["proto", "diff", old, str(tmp_path / "missing.json")])
    assert r.exit_code == 2 and "ENOENT: NEW" in r.output
    (tmp_path / "bad.json").write_text("{")
    r = runner.invoke(main, ["proto", "diff", str(tmp_path / "bad.json"), old])
    assert r.exit_code == 2 and "EINVAL: OLD" in r.output and "not JSON" in r.output
