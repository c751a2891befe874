"""Replay fuzz inputs through the harness without atheris: ``python -m tests.fuzz.replay
FILE_OR_DIR...``. Prints each input that raises (with its traceback) and a count;
exits 1 if any did. Run under ``coverage run`` to see what a corpus reaches."""

from __future__ import annotations

import logging
import pathlib
import sys
import traceback

from tests.fuzz import harness


def inputs(args: list[str]) -> list[pathlib.Path]:
    out: list[pathlib.Path] = []
    for arg in args:
        path = pathlib.Path(arg)
        out += sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return out


def main(args: list[str]) -> int:
    logging.disable(logging.CRITICAL)
    failed = 0
    files = inputs(args)
    for path in files:
        try:
            harness.run(path.read_bytes())
        except Exception:  # noqa: BLE001 - every escape is a finding
            failed += 1
            print(f"--- {path}", file=sys.stderr)
            traceback.print_exc()
    print(f"{len(files)} inputs, {failed} raised")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
