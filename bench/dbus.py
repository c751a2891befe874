"""The D-Bus round trip a user would otherwise pick: dbus-daemon with dbus-fast at both ends.

``DBusDaemon`` starts a private dbus-daemon (its own config, socket and log in a
temp dir; never the session or system bus) and stops it by its pid. The service
exports ``Echo(ay) -> ay`` that unpacks and repacks the msgpack envelope the floor
cases use (bench/floors.py ``envelope``); the client calls it in a loop and checks
``seq``, as the floor's DEALER client does. Both ends use dbus-fast's asyncio API
(the ``bench`` extra). Each end is its own process, started with multiprocessing
``spawn`` by bench/run.py; results go back over a pipe.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time

PATH = "/org/auxipc/bench/Echo"
IFACE = "org.auxipc.bench.Echo"
NAME = "org.auxipc.bench.Echo"

CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def missing() -> str | None:
    """Why the D-Bus case cannot run here (None: it can)."""
    if not shutil.which("dbus-daemon"):
        return "dbus-daemon is not installed (apt-get install dbus-daemon)"
    try:
        import dbus_fast  # noqa: F401
    except ImportError:
        return "dbus-fast is not installed (pip install 'auxipc[bench]')"
    return None


class DBusDaemon:
    """A private dbus-daemon in ``tmp``: ``address`` to connect to, ``pid`` to pin it."""

    def __init__(self, tmp: str):
        self.dir = os.path.join(tmp, "dbus")
        os.makedirs(self.dir, exist_ok=True)
        conf = os.path.join(self.dir, "bus.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(path=os.path.join(self.dir, "bus.sock")))
        self._log = open(os.path.join(self.dir, "dbus.log"), "w")
        self.popen = subprocess.Popen([shutil.which("dbus-daemon"), f"--config-file={conf}", "--nofork",
                                       "--nopidfile", "--print-address=1"],
                                      stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, text=True)
        self.pid = self.popen.pid
        self.address = self.popen.stdout.readline().strip()
        if not self.address:
            self.stop()
            raise RuntimeError(f"dbus-daemon printed no address (log: {self.dir}/dbus.log)")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.popen.stdout.close()
        self._log.close()


def echo_server(address, ready, stop):
    from dbus_fast.aio import MessageBus
    from dbus_fast.service import ServiceInterface, method
    from msgpack import packb, unpackb

    class Echo(ServiceInterface):
        def __init__(self):
            super().__init__(IFACE)

        @method()
        def Echo(self, data: "ay") -> "ay":  # noqa: F821, N802 — D-Bus signature and member name
            return packb(unpackb(data))

    async def main():
        bus = await MessageBus(bus_address=address).connect()
        bus.export(PATH, Echo())
        await bus.request_name(NAME)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        bus.disconnect()

    asyncio.run(main())


def echo_client(address, n_warm, n, started, conn):
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus
    from msgpack import packb, unpackb

    from bench.floors import envelope

    async def main():
        bus = await MessageBus(bus_address=address).connect()
        call = bus.call

        async def once(i):
            reply = await call(Message(destination=NAME, path=PATH, interface=IFACE, member="Echo",
                                       signature="ay", body=[packb(envelope(i))]))
            if reply.message_type != MessageType.METHOD_RETURN:
                raise RuntimeError(reply.body)
            if unpackb(reply.body[0])["seq"] != i:
                raise RuntimeError("seq mismatch")

        for i in range(n_warm):
            await once(i)
        started.set()
        lat = [0] * n
        pc = time.perf_counter_ns
        t_start = pc()
        for i in range(n):
            t0 = pc()
            await once(i)
            lat[i] = pc() - t0
        total = pc() - t_start
        bus.disconnect()
        return lat, total

    lat, total = asyncio.run(main())
    conn.send({"lat": lat, "total_ns": total})
