"""auxipc benchmark suite: floors (raw pyzmq) beside the real broker and runtimes.

Run ``python bench/run.py`` from the project root; see bench/README.md.
"""
