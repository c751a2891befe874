"""The raw peer's constants are the documents': message types and errnos as
docs/protocol.md's tables give them, event codes and enum values as docs/events.md's.
(Those tables are generated from proto/ and kept current by tests/test_proto.py and
tests/test_codegen.py, so this closes the loop: spec, code and raw peer agree.)"""

from __future__ import annotations

import re
from pathlib import Path

from tests.wire import rawpeer as W

DOCS = Path(__file__).resolve().parents[2] / "docs"


def rows(text: str, first_cell: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with ``| first_cell |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    out = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        out.append([c.strip() for c in line.strip("|").split("|")])
    return out


def test_message_types():
    table = {name: int(t) for t, name, *_ in rows((DOCS / "protocol.md").read_text(), "t")}
    mine = {name: getattr(W, name) for name in table}
    assert mine == table
    assert len(table) == 35


def test_errnos():
    table = {name: int(value) for name, value, *_ in rows((DOCS / "protocol.md").read_text(), "name")}
    for name in ("EPERM", "ENOENT", "ENODEV", "EINVAL", "EEXIST", "EBUSY", "EDEADLK", "EPROTO", "EMSGSIZE",
                 "EOPNOTSUPP", "ETIMEDOUT"):
        assert getattr(W, name) == table[name], name
    assert table["EPROBE_DEFER"] == -517 and table["ENOMEM"] == -12


def test_event_codes_and_enums():
    text = (DOCS / "events.md").read_text()
    codes = {re.sub(r"\[(\w+)\].*", r"\1", ev): int(code) for code, ev, *_ in rows(text, "code")}
    for name in ("LINK_CHANGE", "RESET_WARN", "AFTER_MTU_CHANGE", "FW_EVENT", "REQUEST_RESET", "QSET_ADD",
                 "MAC_FILTER", "VLAN_FILTER", "SET_MAC", "POST_CONFIG"):
        assert getattr(W, name) == codes[name], name
    assert codes["PREPARE_DETACH"] == 10 and codes["VIRTCHNL_PASSTHROUGH"] == 74   # used by number in the tests
    state = {re.sub(r"\[(\w+)\].*", r"\1", ev) for _, ev, _, delivery, *_ in rows(text, "code")
             if delivery == "async, state"}
    assert state == {"LINK_CHANGE", "AFTER_MTU_CHANGE"}
    duplex = text[text.index("### Duplex"):]
    assert "| FULL | 2 |" in duplex and W.DUPLEX_FULL == 2
    reset = text[text.index("### ResetType"):]
    assert "| FUNC | 1 |" in reset and W.RESET_FUNC == 1
