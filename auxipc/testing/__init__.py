"""Buses for tests and demos: the ``auxbus`` pytest plugin, scenario files and
their runner, the chaos soak and the demos."""
