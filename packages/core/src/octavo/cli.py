"""The ``octavo`` command. Packages add subcommands through the ``register_commands`` hook."""

from __future__ import annotations

import json

import click

from octavo.plugins import PluginError, PluginInfo, get_plugin_manager


def _plugin_commands() -> dict[str, tuple[click.Command, PluginInfo]]:
    try:
        return get_plugin_manager().commands()
    except PluginError as exc:
        raise click.ClickException(str(exc)) from exc


class PluginGroup(click.Group):
    """A click group that also serves the subcommands plugins add with ``register_commands``.

    Plugin commands are looked up on demand from the current plugin manager, so the group
    itself never changes and ``reset_plugin_manager()`` takes effect at once.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_plugin_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        plugin_command = _plugin_commands().get(cmd_name)
        if plugin_command is None:
            return command
        if command is not None:
            raise click.ClickException(f"{plugin_command[1].origin} adds command {cmd_name!r}, "
                                       "which octavo already has")
        return plugin_command[0]


@click.group(cls=PluginGroup)
@click.version_option(package_name="octavo-core")
def cli() -> None:
    """Octavo: fast LLM inference and serving."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List the plugins: name, distribution, version, hooks and the names each registered;
    failed and disabled plugins with the reason."""
    from octavo.plugins.report import all_plugins, describe

    try:
        pm = get_plugin_manager()
    except PluginError as exc:
        raise click.ClickException(str(exc)) from exc
    infos = all_plugins(pm)
    if as_json:
        click.echo(json.dumps([info.as_dict() for info in infos], indent=2))
        return
    for info in infos:
        click.echo("\n".join(describe(pm, info)))


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
