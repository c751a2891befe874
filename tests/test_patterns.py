"""docs/patterns.md: the scenario run three ways (notifier chain, exported ops, event contract)
on real buses, the report's structure, what the bus observed for each, and that the committed
page is what the generator makes (outside the measured numbers)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from auxipc.cli.main import main
from auxipc.testing.patterns.facts import code_lines, facts
from auxipc.testing.patterns.report import DOC, ROOT, render, stale
from auxipc.testing.patterns.run import PATTERNS, run_all

pytestmark = pytest.mark.slow
N = 10


@pytest.fixture(scope="module")
def all_facts():
    return [facts(run, ROOT) for run in run_all(N)]


@pytest.fixture(scope="module")
def page(all_facts):
    return render(all_facts)


def _table(page: str) -> dict[str, list[str]]:
    rows = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    cells = {}
    for line in rows:
        parts = [c.strip() for c in line.strip("|").split(" | ")]
        cells[parts[0]] = parts[1:]
    return cells


@pytest.mark.timeout(90)
def test_the_report_has_one_column_per_pattern_and_every_row(page):
    assert page.startswith("# One scenario, three ways")
    for heading in ("## The scenario", "## Side by side", "## How each cell is derived",
                    "## Where the emulation departs from the kernel"):
        assert heading in page
    table = _table(page)
    assert [c.split(") ", 1)[1] for c in table[""]] == [p.title for p in PATTERNS]
    for label in ("files, parent + driver", "lines of code, parent / driver", "unknown event",
                  "lifetime: the first send after the driver died", "locking (device_lock, rtnl, lockdep)",
                  "discoverability", "crash: errno the bus gave the caller", "crash: what the caller's code got",
                  "crash: time to notice (measured on this machine)"):
        assert len(table[label]) == 3, label
    cost = next(k for k in table if k.startswith("per-call cost"))
    assert f"of {N} round trips" in cost
    assert all(re.fullmatch(r"[\d.]+ µs \([\d.]+ µs\)", c) for c in table[cost]), table[cost]
    assert all(re.fullmatch(r"[\d.]+ ms", c) for c in table["crash: time to notice (measured on this machine)"])
    assert all(re.fullmatch(r"\d+ / \d+", c) for c in table["lines of code, parent / driver"])


@pytest.mark.timeout(90)
def test_what_the_bus_observed_for_each_pattern(all_facts):
    notifier, ops, contract = all_facts
    # unknown events: only the contract's are refused before delivery
    assert contract["unknown"]["caught"] and not notifier["unknown"]["caught"] and not ops["unknown"]["caught"]
    assert "EOPNOTSUPP" in contract["unknown"]["text"]
    # lifetime: the notifier chain still calls the dead driver's block
    assert "stale NOTIFIER_CALL" in notifier["lifetime"]["text"] and contract["lifetime"]["caught"]
    # locking: only the contract's DCB request reaches the parent as an rtnl call
    assert [f["locking"]["rtnl_declared"] for f in all_facts] == [False, False, True]
    assert all(f["locking"]["lockdep"] == 0 for f in all_facts)
    # discoverability: the carriers name nothing
    assert [f["discovery"]["steps"] for f in all_facts] == [0, 0, 3]
    # the crash: the bus fails the pending call with ENODEV in every pattern, at once
    assert [f["crash"]["bus_errno"] for f in all_facts] == ["ENODEV"] * 3
    assert [f["crash"]["seen"] for f in all_facts] == ["-ENODEV (an int)", "nothing (void)", "-ENODEV (raised)"]
    assert all(f["crash"]["notice_ms"] is not None and f["crash"]["notice_ms"] >= 0 for f in all_facts)
    for f in all_facts:
        assert f["calls"]["reset"] == 3 and f["calls"]["dcb"] == 3 and f["calls"]["crash"] == 2, f["calls"]


@pytest.mark.timeout(90)
def test_docs_patterns_md_is_what_the_generator_makes(page):
    """Regenerate with `auxipc patterns report -o docs/patterns.md` (scripts/gen-docs does)."""
    assert stale(DOC.read_text(), page) == []


def test_stale_ignores_the_measured_numbers_only(page):
    measured = page.replace(" ms |", "1 ms |", 1)
    assert stale(page, measured) == []
    edited = page.replace("lines of code, parent / driver |", "lines of code, parent / driver | 1", 1)
    assert stale(page, edited)


def test_lines_of_code_leave_out_docstrings_comments_and_blanks(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('"""Module\n\ndoc."""\n\n# a comment\nimport os\n\n\ndef f():\n    """Doc."""\n'
                   '    return os.sep  # trailing\n')
    assert code_lines(src) == 3


@pytest.mark.timeout(90)
def test_the_cli_checks_the_page(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["patterns", "report", "-n", str(N), "-q", "--check", str(DOC)])
    assert ok.exit_code == 0, ok.output
    old = tmp_path / "patterns.md"
    old.write_text(DOC.read_text().replace("| unknown event |", "| unknown events |"))
    bad = runner.invoke(main, ["patterns", "report", "-n", str(N), "-q", "--check", str(old)])
    assert bad.exit_code == 1
    assert "out of date" in bad.output
