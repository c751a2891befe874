"""atheris (libFuzzer) entry point: ``python tests/fuzz/fuzz_bus.py [libFuzzer flags] [corpus dirs]``.

Coverage-guided over the envelope decoder and the bus model (proto and
auxipc.broker are instrumented). ``--seeds DIR`` writes the seed sessions into
DIR and exits. ``scripts/fuzz`` is the usual way in.
"""

import logging
import pathlib
import sys

import atheris

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["proto", "auxipc"]):
    from tests.fuzz import harness, seeds

logging.disable(logging.CRITICAL)     # the bus logs every refusal; the fuzzer wants exceptions only


def test_one_input(data: bytes) -> None:
    harness.run(data)


def main() -> None:
    if sys.argv[1:2] == ["--seeds"]:
        out = pathlib.Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.sessions().items():
            (out / f"seed-{name}").write_bytes(data)
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
