"""A bus across hosts: TCP endpoints, CURVE keys, refused peers, remote peers in ls and
the trace. Real processes on loopback TCP (the network-namespace tests are in
test_partition.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from auxipc import keys
from auxipc.cli.main import main
from auxipc.observe.client import Client
from auxipc.runtime_dir import endpoints, parse_tcp, remote_host, tcp_endpoints
from auxipc.testing.harness import Harness
from proto.errno import AuxError, Errno


def free_ports(n: int = 4) -> int:
    """A loopback PORT with PORT..PORT+n-1 free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for i in range(n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no 4 free ports in a row on loopback")


@pytest.fixture
def keydir(tmp_path, monkeypatch):
    d = tmp_path / "keys"
    monkeypatch.setenv("AUXIPC_KEYS", str(d))
    monkeypatch.setenv("AUXIPC_KEY_NAME", "host2")
    keys.create("broker")
    keys.admit(keys.create("host2"))
    keys.create("stranger")
    return d


def tcp_harness(monkeypatch, url: str, extra: dict | None = None) -> Harness:
    """A harness whose processes, client and watcher all reach the broker over TCP."""
    monkeypatch.setenv("AUXIPC_CONNECT", url)
    for k, v in (extra or {}).items():
        monkeypatch.setenv(k, v)
    return Harness(prefix="axmh-", env={"AUXIPC_CONNECT": url, **(extra or {})})


# ---- endpoints and keys (no processes) ----

def test_tcp_endpoints_use_four_ports():
    assert tcp_endpoints("tcp://10.0.0.1:7700") == {
        "bus": "tcp://10.0.0.1:7700", "pub": "tcp://10.0.0.1:7701",
        "sub": "tcp://10.0.0.1:7702", "notify": "tcp://10.0.0.1:7703"}
    assert tcp_endpoints("tcp://[::1]:7700")["sub"] == "tcp://[::1]:7702"


@pytest.mark.parametrize("bad", ["tcp://host", "ipc:///tmp/x", "tcp://:7700", "tcp://h:65534", "tcp://h:0", "h:1"])
def test_bad_tcp_url_names_the_option(bad):
    with pytest.raises(AuxError) as exc:
        parse_tcp(bad, "--listen")
    assert exc.value.errno == Errno.EINVAL and "--listen" in exc.value.message and "tcp://HOST:PORT" in exc.value.message


def test_env_selects_tcp(monkeypatch, tmp_path):
    monkeypatch.setenv("AUXIPC_CONNECT", "tcp://127.0.0.1:7700")
    ep = endpoints(tmp_path)
    assert ep.remote and ep.bus == "tcp://127.0.0.1:7700" and ep.where == "tcp://127.0.0.1:7700"
    assert not endpoints(tmp_path, connect="").remote       # the broker's own ipc side
    monkeypatch.delenv("AUXIPC_CONNECT")
    assert endpoints(tmp_path).bus == f"ipc://{tmp_path}/bus.sock"


def test_remote_host_from_routing_id():
    assert remote_host(b"p:ixd:12:abcdef@ipu-a") == "ipu-a"
    assert remote_host(b"p:ixd:12:abcdef") is None


def test_keys_create_admit_list(keydir):
    info = keys.listing()
    assert {p["name"] for p in info["pairs"]} == {"broker", "host2", "stranger"}
    assert [a["name"] for a in info["authorized"]] == ["host2"]
    assert (keydir / "host2.key_secret").stat().st_mode & 0o077 == 0
    with pytest.raises(AuxError) as exc:
        keys.create("host2")
    assert exc.value.errno == Errno.EEXIST
    keys.revoke("host2")
    assert keys.listing()["authorized"] == []


def test_missing_key_says_what_to_run(keydir, monkeypatch):
    monkeypatch.setenv("AUXIPC_KEY_NAME", "nobody")
    with pytest.raises(AuxError) as exc:
        keys.client_keys()
    assert exc.value.errno == Errno.ENOENT and "auxipc keys create nobody" in exc.value.message


def test_keys_cli(tmp_path):
    env = {"AUXIPC_KEYS": str(tmp_path / "k")}
    r = CliRunner().invoke(main, ["keys", "create", "broker"], env=env)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["keys", "create", "h2"], env=env)
    r = CliRunner().invoke(main, ["keys", "admit", str(tmp_path / "k" / "h2.key")], env=env)
    assert r.exit_code == 0 and "authorized/h2.key" in r.output
    r = CliRunner().invoke(main, ["keys", "ls"], env=env)
    assert "pair  broker" in r.output and "admit h2" in r.output
    r = CliRunner().invoke(main, ["keys", "create", "h2"], env=env)
    assert r.exit_code == 1 and "EEXIST" in r.output


# ---- real processes over loopback TCP ----

def test_curve_bus_over_tcp(keydir, monkeypatch):
    """Broker, parent, child, client and watcher all over CURVE TCP: the device binds,
    events flow both ways, ls shows the listener and each peer's host, the trace the
    REGISTER's host."""
    url = f"tcp://127.0.0.1:{free_ports()}"
    with tcp_harness(monkeypatch, url) as h:
        h.broker("--listen", url)
        h.parent("ixd")
        h.child("idpf_eth")
        h.expect_uevent("BIND", dev="ixd.eth.0", timeout=10)
        reg = [r for r in h.trace() if r.get("action") == "REGISTER"]
        assert reg and all(r["detail"]["host"] == socket.gethostname() for r in reg), reg
        snap = h.ls()
        assert snap["listen"] == [{"url": url, "security": "curve"}]
        assert {p["host"] for p in snap["peers"]} == {socket.gethostname()}
        # Ops that change the bus are taken on the broker host's admin socket only.
        refused = h.send("ixd.eth.0", "FW_EVENT", {"kind": "HEALTH"}, side="parent")
        assert refused["error"] == "EPERM" and "admin" in refused["message"], refused
        monkeypatch.delenv("AUXIPC_CONNECT")
        with Client(h.root) as local:
            assert local.send_event("ixd.eth.0", "FW_EVENT", "parent", {"kind": "HEALTH"}, 5.0)["errno"] == 0
        h.expect(kind="event", event="FW_EVENT", timeout=5)
        monkeypatch.setenv("AUXIPC_CONNECT", url)
        out = subprocess.run([sys.executable, "-m", "auxipc", "ls", "--table"], capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 0, out.stderr
        assert f"listening on {url}: CURVE" in out.stdout and "HOST" in out.stdout


def test_unadmitted_peer_is_refused_on_both_sides(keydir, monkeypatch):
    url = f"tcp://127.0.0.1:{free_ports()}"
    with tcp_harness(monkeypatch, url) as h:
        h.broker("--listen", url)
        env = {**h.proc_env(), "AUXIPC_KEY_NAME": "stranger"}
        for argv in (["child", "--driver", "idpf_eth"], ["ls"]):
            out = subprocess.run([sys.executable, "-m", "auxipc", *argv], capture_output=True, text=True,
                                 env={**os.environ, **env}, timeout=30)
            assert out.returncode == 1, out
            assert "EPERM" in out.stderr and "refused this host's key 'stranger'" in out.stderr
            assert str(keydir) in out.stderr and "Traceback" not in out.stderr
        assert h.ls()["stats"]["refused_keys"] >= 1
        h.stop_broker()
        with open(h.broker_proc.log_path) as f:
            log = f.read()
        assert "refused a CURVE client with key" in log and "authorized" in log


def test_insecure_tcp_needs_the_flag_and_ls_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("AUXIPC_KEYS", str(tmp_path / "none"))
    url = f"tcp://127.0.0.1:{free_ports()}"
    with tcp_harness(monkeypatch, url, {"AUXIPC_INSECURE": "1"}) as h:
        h.broker("--listen", url, "--insecure")
        h.parent("ixd")
        h.child("idpf_eth")
        h.expect_uevent("BIND", dev="ixd.eth.0", timeout=10)
        assert h.ls()["listen"] == [{"url": url, "security": "insecure"}]
        out = subprocess.run([sys.executable, "-m", "auxipc", "ls"], capture_output=True, text=True, timeout=30)
        assert "INSECURE plain TCP" in out.stdout


def test_broker_without_keys_refuses_to_listen_securely(monkeypatch, tmp_path):
    monkeypatch.setenv("AUXIPC_KEYS", str(tmp_path / "none"))
    out = subprocess.run([sys.executable, "-m", "auxipc", "broker", "--runtime-dir", str(tmp_path / "rt"),
                          "--listen", f"tcp://127.0.0.1:{free_ports()}"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "ENOENT" in out.stderr and "auxipc keys create broker" in out.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="a pid namespace (unshare --pid) needs root")
def test_remote_peer_is_not_judged_by_local_pids(keydir, monkeypatch):
    """A driver in another pid namespace (its pid means nothing here, as on another host)
    stays alive through the broker's process checks: those run at every disconnect, and
    would find its pid gone or someone else's. A SIGKILL is then seen by heartbeats."""
    url = f"tcp://127.0.0.1:{free_ports()}"
    with tcp_harness(monkeypatch, url) as h:
        h.broker("--listen", url, "--hb-ivl", "0.1")
        h.start("parent-ixd", "parent", "--model", "ixd", env={"AUXIPC_CONNECT": ""})     # local, over ipc
        child = h.start("child-idpf_eth", "child", "--driver", "idpf_eth",
                        wrap=["unshare", "--pid", "--fork", "--kill-child=SIGTERM"])
        h.expect_uevent("BIND", dev="ixd.eth.0", timeout=10)
        remote = next(p for p in h.ls()["peers"] if p["role"] == "child")
        assert remote["host"] != "local" and remote["pid"] != child.pid
        for _ in range(3):     # each connects and disconnects: the broker checks its local peers' processes
            out = subprocess.run([sys.executable, "-m", "auxipc", "ls"], capture_output=True, text=True, timeout=30,
                                 env={**os.environ, "AUXIPC_CONNECT": "", "AUXIPC_RUNTIME_DIR": h.root})
            assert out.returncode == 0, out.stderr
        h.mark()
        monkeypatch.delenv("AUXIPC_CONNECT")
        with Client(h.root) as local:
            assert local.send_event("ixd.eth.0", "FW_EVENT", "parent", {"kind": "HEALTH"}, 5.0)["errno"] == 0
        monkeypatch.setenv("AUXIPC_CONNECT", url)
        assert not [r for r in h.trace() if r.get("action") == "PEER_DEAD"]
        assert next(p for p in h.ls()["peers"] if p["role"] == "child")["alive"]
        with open(f"/proc/{child.pid}/task/{child.pid}/children") as f:
            inner = int(f.read().split()[0])      # the driver process itself, under unshare
        os.kill(inner, signal.SIGKILL)
        dead = h.expect_uevent("PEER_DEAD", timeout=10, name="idpf_eth")
        assert "no heartbeat" in dead["detail"]["reason"], dead


def test_wrong_broker_key_fails_the_handshake_clearly(keydir, monkeypatch, tmp_path):
    """A peer holding another broker's public key: EPERM naming the key dir, not a timeout."""
    url = f"tcp://127.0.0.1:{free_ports()}"
    with tcp_harness(monkeypatch, url) as h:
        h.broker("--listen", url)
        other = tmp_path / "other"
        monkeypatch.setenv("AUXIPC_KEYS", str(other))
        keys.create("broker")
        keys.create("host2")
        out = subprocess.run([sys.executable, "-m", "auxipc", "ls"], capture_output=True, text=True, timeout=30,
                             env={**os.environ})
        assert out.returncode == 1, out
        assert "EPERM" in out.stderr and "handshake with the broker" in out.stderr and str(other) in out.stderr
