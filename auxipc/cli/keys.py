"""``auxipc keys`` (CURVE key pairs and the broker's admitted keys) and the options
that point any command at a bus on another host: ``--connect``, ``--insecure``,
``--keys``. Those are exported to the environment, so every library call and
every process a command starts (``up``, ``demo``, scenarios) takes the same bus.
"""

from __future__ import annotations

import json
import os

import click

from auxipc.cli.options import json_option


def _connect_option(f):
    return click.option("--connect", envvar="AUXIPC_CONNECT", metavar="tcp://HOST:PORT",
                        help="Talk to the broker at HOST (PORT..PORT+3) instead of the runtime dir's. "
                             "Env: AUXIPC_CONNECT.")(f)


def _insecure_option(f):
    return click.option("--insecure", is_flag=True, default=None, envvar="AUXIPC_INSECURE",
                        help="Plain TCP, no CURVE (the broker must listen with --insecure too). "
                             "Env: AUXIPC_INSECURE.")(f)


def _keys_option(f):
    return click.option("--keys", type=click.Path(file_okay=False), envvar="AUXIPC_KEYS",
                        help="CURVE key dir (default $AUXIPC_KEYS, ~/.config/auxipc/keys).")(f)


def REMOTE_OPTIONS(f):
    return _connect_option(_insecure_option(_keys_option(f)))


def export_remote(connect, insecure, keys) -> None:
    if connect:
        os.environ["AUXIPC_CONNECT"] = connect
    if insecure:
        os.environ["AUXIPC_INSECURE"] = "1"
    if keys:
        os.environ["AUXIPC_KEYS"] = os.path.abspath(os.path.expanduser(keys))


@click.group()
def keys():
    """CURVE keys for a bus across hosts: create, admit, revoke, ls.

    See docs/multihost.md.

    \b
    On the broker's host:   auxipc keys create broker
                            auxipc keys admit /path/from/host2/host2.key
    On each peer host:      auxipc keys create $(hostname)   (and copy broker.key there)
    """


@keys.command("create")
@click.argument("name")
def create(name):
    """Create the key pair NAME (NAME.key public, NAME.key_secret secret, mode 0600)."""
    from auxipc import keys as k
    path = k.create(name)
    click.echo(f"created {path} and {path.with_suffix('.key_secret').name}; "
               + ("copy broker.key to every peer host's key dir" if name == k.BROKER
                  else f"admit {path.name} on the broker host with 'auxipc keys admit {path.name}'"))


@keys.command("admit")
@click.argument("public_key", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", help="Name to admit it under (default: the file's name).")
def admit(public_key, name):
    """Let the broker admit the holder of PUBLIC_KEY (copied into authorized/)."""
    from auxipc import keys as k
    click.echo(f"admitted: {k.admit(public_key, name=name)}")


@keys.command("revoke")
@click.argument("name")
def revoke(name):
    """Stop admitting NAME (takes effect at its next connection)."""
    from auxipc import keys as k
    k.revoke(name)
    click.echo(f"revoked {name}")


@keys.command("ls")
@json_option()
def ls(as_json):
    """The key pairs in the key dir and the keys the broker admits."""
    from auxipc import keys as k
    info = k.listing()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"key dir {info['dir']} (peers here use {info['peer_key']!r})")
    for p in info["pairs"]:
        click.echo(f"  pair  {p['name']:<20} {p['public']}" + ("" if p["secret"] else "  (public only)"))
    for a in info["authorized"]:
        click.echo(f"  admit {a['name']:<20} {a['public']}")
    if not info["pairs"] and not info["authorized"]:
        click.echo("  no keys: 'auxipc keys create NAME'")
