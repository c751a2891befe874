"""auxipc's tests. A package so that spawned processes can load ``tests.models:Name``."""
