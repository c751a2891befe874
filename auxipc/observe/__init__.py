"""Seeing a running bus from outside: the control client, the watcher of bus
notifications, calls and events, trace records and their rendering, and the
conditions a script can wait for."""
