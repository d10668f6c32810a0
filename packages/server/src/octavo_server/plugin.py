"""Entry-point plugin of octavo_server: adds ``octavo serve``."""

from octavo.plugins import hookimpl


@hookimpl
def register_commands(cli):
    from octavo_server.cli import serve

    cli.add_command(serve)
