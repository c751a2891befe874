"""``auxipc patterns report``: run one scenario three ways and write the side-by-side report.

The library does the work (auxipc/testing/patterns/); this parses, calls and writes.
"""

from __future__ import annotations

import sys

import click

from auxipc.cli.options import Group


@click.group(cls=Group)
def patterns():
    """One scenario as notifier chains, exported ops and the event contract, measured on the bus: writes docs/patterns.md."""


@patterns.command()
@click.option("-n", "--round-trips", "n", default=200, show_default=True, type=click.IntRange(5, 100_000),
              help="Parent->child round trips timed per pattern (the per-call cost).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="-", show_default=True,
              help="Write the page to FILE (docs/patterns.md in the repo) instead of stdout.")
@click.option("--check", "check", type=click.Path(dir_okay=False, exists=True), default=None, metavar="FILE",
              help="Do not write: exit 1 if FILE differs from a fresh run outside the measured numbers.")
@click.option("-q", "--quiet", is_flag=True, help="Do not print each step as it runs (on stderr).")
def report(n, output, check, quiet):
    """Run the scenario (reset with quiesce, link change, DCB change under rtnl, a driver
    crash mid-call) as mlx5-style notifier chains, ice/irdma-style ops and the event
    contract, each on a bus of its own, and render docs/patterns.md from what the bus recorded."""
    from auxipc.testing.patterns.report import generate, stale
    text = generate(n, log=(lambda line: None) if quiet else (lambda line: click.echo(line, err=True)))
    if check:
        with open(check, encoding="utf-8") as f:
            diff = stale(f.read(), text)
        for line in diff:
            click.echo(line, err=True)
        if diff:
            click.echo(f"auxipc: {check} is out of date: run 'auxipc patterns report -o {check}'", err=True)
            sys.exit(1)
        click.echo(f"{check} is up to date")
        return
    if output == "-":
        click.echo(text, nl=False)
        return
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)
    click.echo(f"wrote {output}", err=True)
