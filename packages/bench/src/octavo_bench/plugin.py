"""Entry-point plugin of octavo_bench: adds ``octavo bench``."""

from octavo.plugins import hookimpl


@hookimpl
def register_commands(cli):
    from octavo_bench.cli import bench

    cli.add_command(bench)
