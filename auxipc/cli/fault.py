"""``auxipc fault``: inject process, handler and message faults into a running bus.

Every fault is deterministic under ``--seed`` and recorded in the trace
(action FAULT). Rules stay in force until ``auxipc fault clear``.
"""

from __future__ import annotations

import json
import os
import signal as signals

import click

from auxipc.cli import complete
from auxipc.cli.options import RUNTIME_DIR, SCHEMA, json_option
from auxipc.faults import SIGNALS
from proto.errno import AuxError, Errno

COMMON = [
    click.option("--count", default=0, type=click.IntRange(0), help="Apply at most N times (0: always)."),
    click.option("--probability", default=1.0, type=click.FloatRange(0, 1), help="Chance per occasion."),
    click.option("--seed", default=0, type=int, help="Seed of this rule's random draws."),
]


def common(fn):
    for opt in reversed(COMMON):
        fn = opt(fn)
    return RUNTIME_DIR(SCHEMA(fn))


def _event(catalog, event: str, what: str) -> str:
    """The catalog's name of ``event`` ('' for any): a rule for an unknown event is refused."""
    return complete.event_arg(catalog, event, what).name if event else ""


def event_option(help: str):
    return click.option("--event", default="", shell_complete=complete.events, help=help)


def _add(runtime_dir, **rule) -> None:
    from auxipc.observe.client import Client
    with Client(runtime_dir) as c:
        got = c.add_fault(**rule)
    click.echo(f"fault #{got['id']} installed: {got['kind']} {got['action'] or got['point']} "
               f"on {got['target']}" + (f" event {got['event']}" if got["event"] else ""))


def _signal(runtime_dir, target: str, sig: str) -> None:
    from auxipc.observe.client import Client
    from auxipc.runtime_dir import endpoints
    if target == "broker":
        lock = endpoints(runtime_dir).root / "broker.lock"
        try:
            pid = int(lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            raise AuxError(Errno.ENOTCONN, f"no broker pid in {lock}") from None
        os.kill(pid, SIGNALS[sig])
        click.echo(f"SIG{sig} -> broker (pid {pid})")
        return
    with Client(runtime_dir) as c:
        for label in c.signal(target, sig):
            click.echo(f"SIG{sig} -> {label}")


@click.group()
def fault():
    """Inject faults: kill/stop processes, break handlers, drop or mangle messages.

    \b
    Examples:
      auxipc fault kill idpf_eth                        # SIGKILL the driver process now
      auxipc fault kill idpf_eth --at remove            # ... when its remove() is next called
      auxipc fault kill ixd --at reset                  # the parent dies while sending RESET_WARN
      auxipc fault stop idpf_eth; auxipc fault cont idpf_eth
      auxipc fault handler idpf_eth RESET_WARN --delay 2000
      auxipc fault handler idpf_eth RESET_WARN --errno EIO --count 1
      auxipc fault message idpf_eth --event RESET_WARN --drop --probability 0.5 --seed 7
      auxipc fault message ixd --event LINK_CHANGE --duplicate
      auxipc fault ls; auxipc fault clear
    """


@fault.command()
@common
@click.argument("target", shell_complete=complete.targets)
@click.option("--signal", "sig", default="KILL", type=click.Choice(sorted(SIGNALS)), show_default=True)
@click.option("--at", "point", type=click.Choice(["probe", "remove", "request", "send", "reset"]),
              help="Kill at this lifecycle point instead of now.")
@event_option("With --at request/send: only for this event.")
def kill(runtime_dir, target, sig, point, event, count, probability, seed, catalog):
    """Signal TARGET (a peer name, a pid, or 'broker'), now or at a lifecycle point."""
    if point is None:
        _signal(runtime_dir, target, sig)
    else:
        _add(runtime_dir, kind="kill", target=target, point=point, event=_event(catalog, event, "--event"), signal=sig,
             count=count, probability=probability, seed=seed)


@fault.command()
@RUNTIME_DIR
@click.argument("target")
def stop(runtime_dir, target):
    """SIGSTOP TARGET: it hangs; the broker declares it dead after missed heartbeats."""
    _signal(runtime_dir, target, "STOP")


@fault.command(name="cont")
@RUNTIME_DIR
@click.argument("target")
def cont(runtime_dir, target):
    """SIGCONT a stopped TARGET (by pid if the bus has forgotten it)."""
    if target.isdigit():
        os.kill(int(target), signals.SIGCONT)
        click.echo(f"SIGCONT -> pid {target}")
    else:
        _signal(runtime_dir, target, "CONT")


@fault.command()
@common
@click.argument("target", shell_complete=complete.targets)
@click.argument("event", shell_complete=complete.events)
@click.option("--delay", "delay_ms", type=click.IntRange(1), help="Delay the handler by MS milliseconds.")
@click.option("--hang", is_flag=True, help="Never return (heartbeats go on: callers time out).")
@click.option("--raise", "raise_", is_flag=True, help="Raise in the handler (the caller gets EIO).")
@click.option("--errno", "errno_name", help="Return this errno instead (e.g. EIO, EBUSY).")
def handler(runtime_dir, target, event, delay_ms, hang, raise_, errno_name, count, probability, seed, catalog):
    """Break TARGET's handler of EVENT (an event of the catalog: a misspelt one is refused)."""
    chosen = [a for a, on in (("delay", delay_ms), ("hang", hang), ("raise", raise_), ("errno", errno_name)) if on]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --delay, --hang, --raise, --errno")
    _add(runtime_dir, kind="handler", target=target, event=_event(catalog, event, "EVENT"), action=chosen[0],
         delay_ms=delay_ms or 0, errno=errno_name or "", count=count, probability=probability, seed=seed)


@fault.command()
@common
@click.argument("target", shell_complete=complete.targets)
@event_option("Only messages of this event.")
@click.option("--drop", "action", flag_value="drop", help="Drop it.")
@click.option("--delay", "delay_ms", type=click.IntRange(1), help="Delay it by MS milliseconds.")
@click.option("--duplicate", "action", flag_value="duplicate", help="Deliver it twice.")
@click.option("--reorder", "action", flag_value="reorder", help="Deliver it after the next one.")
@click.option("--corrupt", "action", flag_value="corrupt", help="Flip bytes of its payload.")
def message(runtime_dir, target, event, action, delay_ms, count, probability, seed, catalog):
    """Fault messages to TARGET (sync calls, applied by the broker) or from TARGET
    (async events, applied by its runtime)."""
    if delay_ms:
        if action:
            raise click.UsageError("give one of --drop, --delay, --duplicate, --reorder, --corrupt")
        action = "delay"
    if not action:
        raise click.UsageError("give one of --drop, --delay, --duplicate, --reorder, --corrupt")
    _add(runtime_dir, kind="message", target=target, event=_event(catalog, event, "--event"), action=action,
         delay_ms=delay_ms or 0, count=count, probability=probability, seed=seed)


@fault.command(name="ls")
@RUNTIME_DIR
@json_option()
def list_(runtime_dir, as_json):
    """The fault rules in force."""
    from auxipc.observe.client import Client
    with Client(runtime_dir) as c:
        rules = c.faults()
    if as_json:
        click.echo(json.dumps(rules, indent=2))
        return
    if not rules:
        click.echo("no fault rules")
    for r in rules:
        click.echo(f"#{r['id']}  {r['kind']:<8} {r['action'] or r['point']:<10} target={r['target']} "
                   f"event={r['event'] or '*'} applied={r['applied']} count={r['count'] or '∞'} "
                   f"p={r['probability']} seed={r['seed']}")


@fault.command()
@RUNTIME_DIR
@click.argument("target", required=False, default="")
def clear(runtime_dir, target):
    """Remove every fault rule (or those of TARGET)."""
    from auxipc.observe.client import Client
    with Client(runtime_dir) as c:
        click.echo(f"cleared {c.clear_faults(target)} rule(s)")
