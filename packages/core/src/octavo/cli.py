"""The ``octavo`` command. Packages add subcommands through the ``register_commands`` hook."""

from __future__ import annotations

import json

import click

from octavo.plugins import get_plugin_manager


@click.group()
@click.version_option(package_name="octavo-core")
def cli() -> None:
    """Octavo: fast LLM inference and serving."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List the loaded plugins: name, distribution, version and hooks."""
    infos = list(get_plugin_manager().plugins.values())
    if as_json:
        click.echo(json.dumps([info.as_dict() for info in infos], indent=2))
        return
    for info in infos:
        click.echo(f"{info.name}  ({info.distribution} {info.version})")
        for hook in info.hooks:
            click.echo(f"    {hook}")


def main() -> None:
    get_plugin_manager().add_commands(cli)
    cli()
