"""The contract at your fingertips: ``auxipc events EVENT``, ``proto c-header --ops``,
``send`` with key=value / @file.json and an inferred --from, shell completion, and
fault rules for unknown events refused."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from click.shell_completion import ShellComplete
from click.testing import CliRunner

from auxipc.cli.main import main
from proto import kvargs
from proto.errno import AuxError, Errno
from proto.events import CATALOG
from proto.payloads import DcbConfig, FwEvent, SetMac, VlanFilter

GCC = shutil.which("gcc")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


# ---- auxipc events EVENT -------------------------------------------------------------------

def test_events_names_one_event_in_full():
    r = invoke("events", "SET_MAC")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "SET_MAC (76), since schema 1.0"
    text = "\n".join(lines)
    for needle in ("direction  child->parent", "delivery   sync: answered exactly once",
                   "context    process context: the handler may sleep",
                   "rtnl       held around the handler",
                   "payload: struct auxipc_set_mac (SetMac)", "reply: struct auxipc_set_mac_reply (SetMacReply)"):
        assert needle in text, needle
    row = next(line.split() for line in lines if line.strip().startswith("filter_id"))
    assert row[:6] == ["filter_id", "u16", "int", "0..65535", "required", "1.0"]


def test_events_shows_nested_structs_enums_defaults_and_atomic_context():
    r = invoke("events", "dcb_config")                      # any case, like the rest of the CLI
    assert r.exit_code == 0, r.output
    assert "  nested: struct auxipc_ets (Ets)" in r.output and "enum Tsa: STRICT=0" in r.output
    assert "u8[8] (enum auxipc_tsa)" in r.output and "int 0..100 [8] summing to 100" in r.output
    assert '{"pfc_en": 0, "mbc": false, "delay": 0}' in r.output and "reply: none" in r.output
    link = invoke("events", "1").output                     # by code
    assert link.startswith("LINK_CHANGE (1)") and "atomic context: the handler must not sleep" in link
    assert "the last value is replayed to a late joiner" in link and '"UNKNOWN"' in link


def test_events_event_json():
    r = invoke("events", "SET_MAC", "--json")
    d = json.loads(r.output)
    assert (d["name"], d["sender"], d["rtnl"]) == ("SET_MAC", "child", True)
    assert d["structs"]["SetMac"]["fields"][0] | {"doc": ""} == {
        "name": "addr", "ctype": "u8[6]", "rule": "6 bytes", "default": "required", "since": "1.0", "doc": ""}
    assert set(d["structs"]) == {"SetMac", "SetMacReply"}


def test_events_misspelt_event_names_the_closest():
    r = invoke("events", "SET_MAX")
    assert r.exit_code == 2
    assert "EINVAL: EVENT 'SET_MAX': no such event in schema 1.0 (closest: SET_MAC)" in r.output


# ---- proto c-header --ops --------------------------------------------------------------------

def test_c_header_ops():
    plain = invoke("proto", "c-header").output
    assert "auxipc_child_ops" not in plain
    text = invoke("proto", "c-header", "--ops").output
    assert text.startswith(plain.removesuffix("#endif /* _AUXIPC_EVENTS_H */\n"))
    assert ("\t/* SET_MAC: sync, called with rtnl held */\n\tint (*set_mac)(struct auxiliary_device *adev, "
            "const struct auxipc_set_mac *p, struct auxipc_set_mac_reply *reply);") in text
    assert ("\t/* LINK_CHANGE: async, atomic: must not sleep */\n\tvoid (*link_change)(struct auxiliary_device "
            "*adev, const struct auxipc_link_change *p);") in text
    assert "\tint (*post_init)(struct auxiliary_device *adev);" in text
    child_ops = text[text.index("struct auxipc_child_ops {"):text.index("struct auxipc_parent_ops {")]
    assert "set_mac" not in child_ops and "reset_warn" in child_ops


@pytest.mark.skipif(GCC is None, reason="no gcc")
def test_c_header_ops_compiles(tmp_path):
    (tmp_path / "auxipc_events.h").write_text(invoke("proto", "c-header", "--ops").output)
    (tmp_path / "use.c").write_text(
        '#include "auxipc_events.h"\n'
        "static int set_mac(struct auxiliary_device *adev, const struct auxipc_set_mac *p,\n"
        "\t\t   struct auxipc_set_mac_reply *reply)\n{\n\t(void)adev;\n\treply->filter_id = p->addr[5];\n"
        "\treturn 0;\n}\n"
        "const struct auxipc_parent_ops ops = { .set_mac = set_mac };\n")
    r = subprocess.run([GCC, "-std=gnu11", "-Wall", "-Werror", "-fsyntax-only", str(tmp_path / "use.c")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


# ---- key=value payloads ----------------------------------------------------------------------

def test_key_values_typed_by_the_schema():
    assert kvargs.assign(VlanFilter, ["vid=100", "proto=0x88a8", "op=del"]) == {
        "vid": 100, "proto": 0x88A8, "op": "DEL"}
    assert kvargs.assign(SetMac, ["addr=02:00:00:00:00:01"]) == {"addr": "02:00:00:00:00:01"}
    assert kvargs.assign(FwEvent, ["kind=HEALTH", "data=0a0b", "state=2"]) == {
        "kind": "HEALTH", "data": [10, 11], "state": 2}
    got = kvargs.assign(DcbConfig, ["ets.willing=yes", "ets.tc_tx_bw=[50,50,0,0,0,0,0,0]", "pfc.pfc_en=0x10"],
                        into={"ets": {"willing": False}})
    assert got == {"ets": {"willing": True, "tc_tx_bw": [50, 50, 0, 0, 0, 0, 0, 0]}, "pfc": {"pfc_en": 16}}
    # what the schema checks afterwards is the payload's own validation, unchanged
    CATALOG.lookup("VLAN_FILTER").payload.from_wire(kvargs.assign(VlanFilter, ["vid=7"]), strict=True)


@pytest.mark.parametrize("pair,message", [
    ("adr=1", "adr: SetMac has no field 'adr' (closest: addr; fields: addr)"),
    ("addr", "'addr': expected key=value"),
])
def test_key_value_errors_name_the_key(pair, message):
    with pytest.raises(AuxError) as e:
        kvargs.assign(SetMac, [pair])
    assert e.value.errno == Errno.EINVAL and message in str(e.value)


@pytest.mark.parametrize("pair,message", [
    ("vid=ten", "vid: expected an int, got 'ten'"),
    ("op=REMOVE", "op: 'REMOVE' is not one of ADD, DEL"),
    ("vid.x=1", r"vid.x: vid is not a struct \(int\)"),
])
def test_key_value_type_errors(pair, message):
    with pytest.raises(AuxError, match=message):
        kvargs.assign(VlanFilter, [pair])


def test_bool_and_json_errors():
    with pytest.raises(AuxError, match=r"ets\.willing: expected a bool \(true/false\), got 'maybe'"):
        kvargs.assign(DcbConfig, ["ets.willing=maybe"])
    with pytest.raises(AuxError, match=r"ets\.prio_tc: expected an array as JSON"):
        kvargs.assign(DcbConfig, ["ets.prio_tc=0,1"])


def test_send_usage_errors_before_any_bus(tmp_path):
    r = invoke("send", "x.eth.0", "SET_MAC", "adr=02:00:00:00:00:01", "--runtime-dir", str(tmp_path))
    assert r.exit_code == 2 and "SetMac has no field 'adr' (closest: addr" in r.output
    r = invoke("send", "x.eth.0", "SET_MAX", "--runtime-dir", str(tmp_path))
    assert r.exit_code == 2 and "closest: SET_MAC" in r.output
    (tmp_path / "p.json").write_text("[1]")
    r = invoke("send", "x.eth.0", "SET_MAC", "@" + str(tmp_path / "p.json"), "--runtime-dir", str(tmp_path))
    assert r.exit_code == 2 and "must be a JSON object" in r.output
    r = invoke("send", "x.eth.0", "SET_MAC", "@" + str(tmp_path / "none.json"), "--runtime-dir", str(tmp_path))
    assert r.exit_code == 1 and "ENOENT" in r.output


def test_send_infers_from_and_takes_key_values_and_files(bus, tmp_path):
    parent = bus.parent(AXT_DEVS="eth:0")
    child = bus.child(AXT_IDS="tp.eth")
    bus.wait_uevent("BIND", dev="tp.eth.0")
    r = bus.cli("send", "tp.eth.0", "SET_MAC", "addr=02:00:00:00:00:07", "--json")      # child->parent
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reply"] == {"addr": "02:00:00:00:00:07", "filter_id": 7}
    assert parent.records("SET_MAC")[0]["addr"] == "020000000007"

    (tmp_path / "link.json").write_text(json.dumps({"up": True, "speed_mbps": 10000}))
    r = bus.cli("send", "tp.eth.0", "LINK_CHANGE", f"@{tmp_path / 'link.json'}", "duplex=full", "speed_mbps=25000")
    assert r.returncode == 0, r.stderr                                                  # parent->child
    link = child.wait_record("LINK_CHANGE", dev="tp.eth.0")
    assert (link["up"], link["speed_mbps"], link["duplex"]) == (True, 25000, "FULL")

    r = bus.cli("send", "tp.eth.0", "SET_MAC", "addr=02:00:00:00:00:08", "--from", "parent")
    assert r.returncode == 1 and "EINVAL" not in r.stdout                               # the bus refuses, as before

    words = completions(["events", "--runtime-dir", str(bus.root)], "tp.")
    assert words == ["tp.eth.0"]
    assert completions(["send", "--runtime-dir", str(bus.root)], "") == ["tp.eth.0"]


# ---- completion ------------------------------------------------------------------------------

def completions(args: list[str], incomplete: str) -> list[str]:
    comp = ShellComplete(main, {}, "auxipc", "_AUXIPC_COMPLETE")
    return [c.value for c in comp.get_completions(args, incomplete)]


def test_completion_of_events_models_and_drivers(tmp_path):
    empty = ["--runtime-dir", str(tmp_path)]               # no bus: no devices, and no waiting
    assert completions(["send", *empty, "ixd.eth.0"], "SET_") == ["SET_MAC"]
    assert completions(["send", *empty, "ixd.eth.0"], "reset_") == ["RESET_COMPLETE", "RESET_WARN"]
    assert "RESET_WARN" in completions(["fault", "handler", *empty, "idpf_eth"], "RES")
    assert completions(["fault", "message", *empty, "x", "--event"], "POST_C") == ["POST_CONFIG"]
    assert completions(["parent", "--model"], "i") == ["ice", "idpf", "ixd"]
    assert completions(["child", "--driver"], "mlx5_") == ["mlx5_ib", "mlx5_vdpa"]
    assert completions(["bind", *empty, "ixd.eth.0"], "idpf") == ["idpf_eth", "idpf_prime"]
    assert completions(["events", *empty], "LINK") == ["LINK_CHANGE"]


# ---- fault rules for events that do not exist ------------------------------------------------

def test_fault_handler_for_an_unknown_event_is_refused(tmp_path):
    r = invoke("fault", "handler", "idpf_eth", "RESET_WARM", "--raise", "--runtime-dir", str(tmp_path))
    assert r.exit_code == 2
    assert "EINVAL: EVENT 'RESET_WARM': no such event in schema 1.0 (closest: RESET_WARN)" in r.output
    r = invoke("fault", "message", "idpf_eth", "--event", "LINK_CHANG", "--drop", "--runtime-dir", str(tmp_path))
    assert r.exit_code == 2 and "--event 'LINK_CHANG'" in r.output and "(closest: LINK_CHANGE)" in r.output
    r = invoke("fault", "kill", "idpf_eth", "--at", "request", "--event", "NOPE", "--runtime-dir", str(tmp_path))
    assert r.exit_code == 2 and "--event 'NOPE': no such event" in r.output
    # a known one passes the check and goes on to the bus (none here)
    r = invoke("fault", "handler", "idpf_eth", "reset_warn", "--raise", "--runtime-dir", str(tmp_path))
    assert r.exit_code == 1 and "ENOTCONN" in r.output


def test_user_events_too(tmp_path):
    r = invoke("events", "SKEW_NEW_CALL", "--schema", "tests.skew.v1_1")
    assert r.exit_code == 0 and r.output.startswith("SKEW_NEW_CALL (0x1001), since schema 1.1\n")
    assert "direction  both" in r.output
    # an event both sides may send: --from cannot be inferred
    r = invoke("send", "x.eth.0", "SKEW_NEW_CALL", "--schema", "tests.skew.v1_1", "--runtime-dir", str(tmp_path))
    assert r.exit_code == 2 and "SKEW_NEW_CALL goes both: say who sends it with --from" in r.output
