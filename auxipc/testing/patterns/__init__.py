"""One scenario, three ways of writing it: the evidence behind docs/patterns.md.

``run.py`` plays the scenario on a real bus once per pattern (a broker, the
pattern's parent model and driver as processes) and keeps what the bus
recorded; ``report.py`` turns the records into the side-by-side report;
``abi.py`` is the schema module the emulated patterns travel in. The
implementations themselves are applications on the bus: parent/patterns and
child/patterns, named here only as ``module:Class`` strings.
"""
