"""``auxipc up`` / ``ps`` / ``stop`` / ``start`` / ``restart`` / ``down``: supervision."""

from __future__ import annotations

import json
import sys
import tomllib

import click

from auxipc.cli.options import RUNTIME_DIR, json_option
from auxipc.observe.render import table
from proto.errno import AuxError, Errno

MODEL_A = """
name = "model-a"
[supervisor]
strategy = "one_for_one"
intensity = 5
period = 30
[[process]]
name = "ixd"
role = "parent"
model = "ixd"
restart = "permanent"
[[process]]
name = "idpf_eth"
role = "child"
driver = "idpf_eth"
restart = "permanent"
"""
SUPERVISOR_KEYS = {"strategy": str, "intensity": int, "period": (int, float), "backoff_min": (int, float),
                   "backoff_max": (int, float), "grace": (int, float)}


def supervisor_spec(text: str, path: str):
    """A SupervisorSpec from a scenario's TOML: the broker first, then its [[process]]
    tables (with ``restart``), tuned by an optional [supervisor] table."""
    from auxipc.process.supervisor import ChildSpec, SupervisorSpec
    from auxipc.testing.scenario import parse
    scenario = parse(text, path)
    data = tomllib.loads(text)
    sup = data.get("supervisor", {})
    if not isinstance(sup, dict):
        raise AuxError(Errno.EINVAL, f"{path}: [supervisor] must be a table")
    kw = {}
    for key, value in sup.items():
        if key not in SUPERVISOR_KEYS:
            raise AuxError(Errno.EINVAL, f"{path}: supervisor.{key}: unknown key "
                           f"(known: {', '.join(SUPERVISOR_KEYS)})")
        if not isinstance(value, SUPERVISOR_KEYS[key]) or isinstance(value, bool):
            raise AuxError(Errno.EINVAL, f"{path}: supervisor.{key}: wrong type {type(value).__name__}")
        kw[key] = value
    children = [ChildSpec("broker", ["broker"], "permanent")]
    for proc in scenario.processes:
        extra = dict(proc.extra)
        restart = extra.pop("restart", "permanent")
        if not isinstance(restart, str):
            raise AuxError(Errno.EINVAL, f"{path}: process {proc.name}: restart must be a string")
        children.append(ChildSpec(proc.name, proc.argv(), restart))
    return SupervisorSpec(children, **kw).check(), scenario


@click.command()
@RUNTIME_DIR
@click.argument("scenario", required=False, type=click.Path(dir_okay=False, exists=True))
def up(runtime_dir, scenario):
    """Start a broker and the processes of SCENARIO (default: Model A, ixd + idpf_eth),
    supervise them, and stop them all on SIGINT/SIGTERM.

    \b
    In the scenario's [[process]] tables: restart = "permanent" | "transient" | "temporary".
    A [supervisor] table sets strategy (one_for_one, one_for_all, rest_for_one),
    intensity and period (give up after more restarts than that), backoff_min,
    backoff_max and grace (seconds between SIGTERM and SIGKILL).
    """
    from auxipc.process.supervisor import Supervisor
    if scenario:
        with open(scenario, encoding="utf-8") as f:
            text, path = f.read(), scenario
    else:
        text, path = MODEL_A, "<model-a>"
    spec, _ = supervisor_spec(text, path)
    sup = Supervisor(spec, runtime_dir, echo=lambda line: (click.echo(line), sys.stdout.flush()))
    sup.up()
    click.echo(f"auxipc up ready: {', '.join(c.name for c in spec.children)} in {sup.ep.root}")
    sys.stdout.flush()
    sys.exit(sup.run())


def _ask(runtime_dir, op, name=""):
    from auxipc.process.supervisor import supervisor_client
    return supervisor_client(runtime_dir, op, name)


@click.command()
@RUNTIME_DIR
@json_option()
def ps(runtime_dir, as_json):
    """The supervised processes: state, pid, restarts, last exit."""
    d = _ask(runtime_dir, "ps")
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    rows = [[p["name"], p["state"], str(p["pid"] or "-"), p["restart"], str(p["restarts"]),
             f"{p['uptime_s']} s" if p["uptime_s"] is not None else "-", p["last_exit"] or "-"]
            for p in d["processes"]]
    click.echo(table(rows, ["NAME", "STATE", "PID", "RESTART", "RESTARTS", "UPTIME", "LAST EXIT"]))
    if d.get("gave_up"):
        click.echo(f"gave up: {d['gave_up']}")


def _op(op: str, doc: str):
    @click.command(name=op, help=doc)
    @RUNTIME_DIR
    @click.argument("name")
    def command(runtime_dir, name):
        p = _ask(runtime_dir, op, name)["process"]
        click.echo(f"{p['name']}: {p['state']}" + (f" (pid {p['pid']})" if p["pid"] else ""))
    return command


stop = _op("stop", "Stop process NAME (SIGTERM, grace, SIGKILL); it is not restarted.")
start = _op("start", "Start process NAME again.")
restart = _op("restart", "Stop and start process NAME.")


@click.command()
@RUNTIME_DIR
def down(runtime_dir):
    """Stop every supervised process (reverse start order) and the supervisor."""
    _ask(runtime_dir, "down")
    click.echo("down: stopping")


COMMANDS = [up, ps, stop, start, restart, down]


@click.command()
@click.option("--duration", default=60.0, show_default=True, type=click.FloatRange(1, 86400),
              help="Seconds of chaos.")
@click.option("--seed", default=1, show_default=True, type=int, help="Seed of the fault schedule.")
@click.option("--interval", default=1.5, show_default=True, type=click.FloatRange(0.1, 60),
              help="Mean seconds between faults.")
@json_option("Print the report as JSON.")
def soak(duration, seed, interval, as_json):
    """Chaos under load: kill, stop and restart drivers, the parent and the broker while
    events flow both ways; then check the invariants and print the figures."""
    from auxipc.testing.soak import Soak
    report = Soak(duration, seed, interval, echo=lambda line: None if as_json else click.echo(line)).run()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"soak {'PASSED' if report['ok'] else 'FAILED'}: seed {seed}, {duration:.0f} s, "
                   f"faults {report['faults']}")
        for k, v in report["recovery"].items():
            click.echo(f"  {k:<28} n={v['n']:<3} median {v['median_ms']} ms  max {v['max_ms']} ms")
        for role, c in report["calls"].items():
            click.echo(f"  {role} calls: {dict(sorted(c.items()))}")
        for role, c in report["async"].items():
            click.echo(f"  {role} async: {dict(sorted(c.items()))}")
        click.echo(f"  worst call overrun past its deadline: {report['worst_call_overrun_ms']} ms")
        for f in report["failures"]:
            click.echo(f"  FAIL {f}")
        if report["logs"]:
            click.echo(f"  each process's log kept in {report['logs']}")
    sys.exit(0 if report["ok"] else 1)


COMMANDS.append(soak)
