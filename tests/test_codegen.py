"""Artefacts generated from the one declaration: the C header (it compiles), the
Markdown reference (docs/events.md cannot drift), the JSON dump, and their CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from auxipc.cli.main import main
from auxipc.schemas import load_catalog
from proto import cheader, mddoc
from proto.events import CATALOG, Delivery, Direction, EventSpec, ResetType
from proto.extend import build_catalog
from proto.schema import Array, Bool, Bytes, Int, Map, Nested, Payload, Str
from proto.schema import Enum as EnumField

REPO = Path(__file__).resolve().parent.parent
GCC = shutil.which("gcc")

USES = r"""
#include "auxipc_events.h"

_Static_assert(AUXIPC_EV_DCB_CONFIG == 72, "event numbers are ABI");
_Static_assert(AUXIPC_SCHEMA_VERSION == AUXIPC_SCHEMA(1, 0), "schema version");
_Static_assert(sizeof(((struct auxipc_mac_filter *)0)->addr) == 6, "a MAC is 6 bytes");
_Static_assert(sizeof(((struct auxipc_qos *)0)->dscp_map) == 64, "dscp_map[64]");
_Static_assert((AUXIPC_EVF_TO_PARENT | AUXIPC_EVF_SYNC) == 6, "flag bits");

int use(union auxipc_payload *p, union auxipc_reply *r);

int use(union auxipc_payload *p, union auxipc_reply *r)
{
	struct auxipc_vlan_filter *vlan = &p->vlan_filter;
	u32 flags = auxipc_event_flags(AUXIPC_EV_VLAN_FILTER);

	vlan->proto = 0x88a8;
	vlan->vid = 4095;
	vlan->op = AUXIPC_FILTER_OP_ADD;
	p->dcb_config.ets.tc_tx_bw[3] = 25;
	p->dcb_config.ets.tc_tsa[3] = AUXIPC_TSA_ETS;
	p->netshaper_set.handle.scope = AUXIPC_SHAPER_SCOPE_QUEUE;
	p->fw_event.data_len = 0;
	r->qset_add.teid = 7;
	if (!(flags & AUXIPC_EVF_RTNL) || auxipc_event_since(AUXIPC_EV_LINK_CHANGE) != AUXIPC_SCHEMA(1, 0))
		return -95;
	return (int)sizeof(*p) + (int)r->qset_add.teid;
}
"""

FLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"]


def _compile(tmp_path: Path, header: str, source: str) -> subprocess.CompletedProcess:
    (tmp_path / "auxipc_events.h").write_text(header)
    (tmp_path / "use.c").write_text(source)
    return subprocess.run([GCC, *FLAGS, "use.c"], cwd=tmp_path, capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(GCC is None, reason="no gcc")
def test_c_header_compiles(tmp_path):
    r = _compile(tmp_path, cheader.render(CATALOG), USES)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(GCC is None, reason="no gcc")
def test_c_header_of_a_user_schema_compiles(tmp_path):
    header = cheader.render(load_catalog(["tests.skew.v1_1"]))
    source = USES.replace("AUXIPC_SCHEMA(1, 0), \"schema", "AUXIPC_SCHEMA(1, 1), \"schema") + r"""
int echo(union auxipc_payload *p);

int echo(union auxipc_payload *p)
{
	p->skew_echo.lanes = 4;
	p->skew_new_note.level = 1;
	return AUXIPC_EV_SKEW_NEW_CALL == 0x1001 ? p->skew_echo.text[0] : -1;
}
"""
    r = _compile(tmp_path, header, source)
    assert r.returncode == 0, r.stderr


def test_c_header_contents():
    h = cheader.render(CATALOG)
    assert h.startswith("/* SPDX-License-Identifier: MIT */")
    assert "#ifndef __KERNEL__" not in h and "#ifdef __KERNEL__\n#include <linux/types.h>\n#else" in h
    for spec in CATALOG:
        assert f"\tAUXIPC_EV_{spec.name} = {int(spec.code)},\n" in h
        assert f"\tcase AUXIPC_EV_{spec.name}:\n" in h
    for cls in CATALOG.structs():
        assert f"{cheader.struct_name(cls)} {{\n" in h
    assert "\tu16 proto;\t/* TPID: 802.1Q or 802.1ad; one of 0x8100, 0x88a8 */\n" in h
    assert "\tu8 tc_tx_bw[8];\t/* percent per TC; int 0..100; summing to 100 */\n" in h
    assert "\tu16 buf_len;\n\tu8 buf[4096];\n" in h
    assert "\tstruct auxipc_ets ets;\n" in h
    assert "\tstruct auxipc_qset_reply qset_add;\n" in h      # the reply union
    assert " * No payload: BEFORE_TC_CHANGE, POST_INIT, REMOVE_NOTIFY.\n" in h
    assert "\tcase AUXIPC_EV_MAC_FILTER:\n\t\treturn AUXIPC_EVF_TO_PARENT | AUXIPC_EVF_ATOMIC;\n" in h


def test_c_header_marks_appended_fields():
    h = cheader.render(load_catalog(["tests.skew.v1_1"]))
    assert "\tu8 lanes;\t/* appended in 1.1; int 1..16; since 1.1 */\n" in h
    assert "#define AUXIPC_SCHEMA_MINOR\t1\n" in h
    assert "\tAUXIPC_EV_SKEW_ECHO = 0x1000,\n" in h


def test_docs_events_md_is_current():
    doc = REPO / "docs" / "events.md"
    assert doc.read_text() == mddoc.render(CATALOG), \
        "docs/events.md is stale: run 'auxipc proto doc -o docs/events.md'"


def test_doc_contents():
    md = mddoc.render(load_catalog(["tests.skew.v1_1"]))
    assert md.startswith("# Event catalog, schema 1.1\n")
    assert "| 72 | [DCB_CONFIG](#dcb_config) | child->parent | sync | may-sleep | yes | 1.0 | [DcbConfig](#dcbconfig) | — |" in md
    assert "| `lanes` | u8 | int 1..16 | `1` | 1.1 | appended in 1.1 |" in md
    assert "| `tc_tsa` | u8 ([Tsa](#tsa))[8] | STRICT / CB_SHAPER / ETS / VENDOR [8] | required | 1.0 |  |" in md
    assert "## Both directions" in md and "### SKEW_NEW_NOTE" in md
    assert '{"seq": 0, "text": "", "lanes": 1}' in md


def test_cli_proto_commands(tmp_path):
    run = CliRunner().invoke
    r = run(main, ["proto", "c-header"])
    assert r.exit_code == 0 and r.output == cheader.render(CATALOG)
    out = tmp_path / "events.md"
    r = run(main, ["proto", "doc", "-o", str(out)])
    assert r.exit_code == 0 and out.read_text() == (REPO / "docs" / "events.md").read_text()
    r = run(main, ["proto", "dump", "--json"])
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d == json.loads(json.dumps(CATALOG.describe()))
    assert d["schema"] == "1.0" and len(d["events"]) == len(CATALOG)
    vlan = {f["name"]: f for f in d["structs"]["VlanFilter"]["fields"]}
    assert vlan["proto"]["choices"] == [0x8100, 0x88A8] and vlan["vid"]["max"] == 4095
    assert d["enums"]["ResetType"] == {"FUNC": 1, "DEV": 2, "GLOBAL": 3, "FLR": 4}
    r = run(main, ["proto", "dump", "--schema", "tests.skew.v1_1"])
    assert r.exit_code == 0 and "struct Echo: seq, text, lanes" in r.output


class Point(Payload):
    """A nested struct."""
    x = Int(-(2**40), 2**40)
    y = Int(-5, 5)


class Sink(Payload):
    """Every field kind, for the C mapping."""
    flag = Bool()
    name = Str(max_len=15)
    blob = Bytes(max_len=300)
    mac = Bytes(size=6)
    pts = Array(Nested(Point), max_len=3)
    grid = Array(Array(Int(0, 9), length=2), length=3)
    names = Array(Str(max_len=7), length=2)
    bits = Array(Bool(), max_len=70000)
    meta = Map(default={})
    kind = EnumField(ResetType, default=ResetType.FLR)
    default = Int(0, 1, default=0, doc="a C keyword as a field name")


@pytest.mark.skipif(GCC is None, reason="no gcc")
def test_every_field_kind_maps_to_c(tmp_path):
    schema = types.SimpleNamespace(__name__="sink", EVENTS=(
        EventSpec(0x1234, "SINK", Direction.BOTH, Delivery.SYNC, Sink, Point),))
    header = cheader.render(build_catalog([schema]))
    body = header[header.index("struct auxipc_sink {"):]
    body = body[:body.index("};") + 2]
    assert body == "\n".join([
        "struct auxipc_sink {",
        "\tbool flag;",
        "\tchar name[16];\t/* NUL-terminated */",
        "\tu16 blob_len;",
        "\tu8 blob[300];",
        "\tu8 mac[6];",
        "\tu8 pts_count;",
        "\tstruct auxipc_point pts[3];",
        "\tu8 grid[3][2];\t/* int 0..9 */",
        "\tchar names[2][8];\t/* NUL-terminated */",
        "\tu32 bits_count;",
        "\tbool bits[70000];",
        "\t/* meta: a map, not representable in C (JSON and msgpack only) */",
        "\tu8 kind;\t/* enum auxipc_reset_type */",
        "\tu8 default_;\t/* a C keyword as a field name; int 0..1 */",
        "};"])
    assert "\ts64 x;\t/* int -1099511627776..1099511627776 */\n\ts8 y;\t/* int -5..5 */\n" in header
    source = '#include "auxipc_events.h"\nint f(union auxipc_reply *r);\n' \
             "int f(union auxipc_reply *r) { return (int)r->sink.y; }\n"
    r = _compile(tmp_path, header, source)
    assert r.returncode == 0, r.stderr
