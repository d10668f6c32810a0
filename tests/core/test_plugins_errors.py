"""Broken plugins are skipped with a reason naming the plugin and its distribution (or, for a
name that fails when used, a PluginError); overrides replace a name explicitly.

Each broken plugin is a real distribution: a ``*.dist-info`` folder (METADATA and
entry_points.txt, as pip writes them) plus its module, on a temporary ``sys.path`` entry, so
``importlib.metadata`` discovers it exactly like an installed package.
"""

from __future__ import annotations

import logging
import re
import sys
import textwrap

import pytest
from click.testing import CliRunner

from octavo.cli import cli
from octavo.plugins import DEFAULT_PLUGINS, OctavoPluginManager, PluginError

HEADER = "from octavo.plugins import hookimpl\n"


pytestmark = pytest.mark.usefixtures("fresh_plugins")


@pytest.fixture
def make_dist(tmp_path, monkeypatch):
    """``make_dist(dist, {ep_name: module}, {module: source})`` installs a tiny distribution.

    Each module's source gets ``from octavo.plugins import hookimpl`` prepended.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def make(dist: str, entry_points: dict[str, str], sources: dict[str, str]) -> None:
        info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(
            "[octavo]\n" + "".join(f"{name} = {mod}\n" for name, mod in entry_points.items()))
        for module, source in sources.items():
            (site / f"{module}.py").write_text(HEADER + textwrap.dedent(source))
            modules.append(module)

    yield make
    for module in modules:
        sys.modules.pop(module, None)


def load(monkeypatch, *names: str) -> OctavoPluginManager:
    monkeypatch.setenv("OCTAVO_PLUGINS", ",".join(names))
    return OctavoPluginManager().load()



def test_good_temporary_distribution_loads(make_dist, monkeypatch):
    make_dist("octavo-good-plugin", {"good": "good_plugin"}, {"good_plugin": """
        @hookimpl
        def register_attention_backends(register):
            register("good", "octavo.attention.torch_backend:TorchAttentionBackend")
        """})
    pm = load(monkeypatch, "good")
    info = pm.plugins["good"]
    assert (info.distribution, info.version, info.hooks) == (
        "octavo-good-plugin", "1.2.3", ["register_attention_backends"])
    assert pm.registry("register_attention_backends").get("good").name == "torch"


def failure(pm: OctavoPluginManager, name: str) -> str:
    """The reason ``name`` was skipped; it registered nothing and is not loaded."""
    assert name not in pm.plugins
    info = pm.failed[name]
    assert info.status == "failed" and info.registered == {}
    return info.reason


def test_entry_point_that_does_not_import_is_skipped(make_dist, monkeypatch, caplog):
    make_dist("octavo-boom-plugin", {"boom": "boom_plugin"},
              {"boom_plugin": "raise ImportError('needs libfoo')\n"})
    with caplog.at_level(logging.WARNING, logger="octavo.plugins.manager"):
        pm = load(monkeypatch, "boom", "example")
    assert failure(pm, "boom") == ("entry point 'boom_plugin' failed to import: ImportError: "
                                   "needs libfoo")
    assert ("plugin 'boom' (distribution 'octavo-boom-plugin') is skipped: entry point "
            "'boom_plugin' failed to import: ImportError: needs libfoo (set "
            "OCTAVO_DISABLE_PLUGINS=boom to silence this)") in caplog.text
    assert "example" in pm.plugins and "example-sdpa" in pm.registry(
        "register_attention_backends")


def test_a_failed_plugin_fails_alone_every_time(make_dist, monkeypatch):
    make_dist("octavo-boom-plugin", {"boom": "boom_plugin"},
              {"boom_plugin": "raise RuntimeError('broken')\n"})
    monkeypatch.setenv("OCTAVO_PLUGINS", "boom")
    for _ in range(2):
        pm = OctavoPluginManager().load()
        assert "RuntimeError: broken" in failure(pm, "boom")
        assert list(pm.plugins) == list(DEFAULT_PLUGINS)


def test_same_plugin_name_in_two_distributions(make_dist, monkeypatch):
    make_dist("octavo-dup-a", {"dup": "dup_a"}, {"dup_a": HEADER})
    make_dist("octavo-dup-b", {"dup": "dup_b"}, {"dup_b": HEADER})
    pm = load(monkeypatch, "dup")
    assert pm.plugins["dup"].distribution == "octavo-dup-a"  # the first one stays
    assert pm.failed["dup"].reason == ("plugin name 'dup' used twice: by distribution "
                                       "'octavo-dup-a' and by 'octavo-dup-b'")


def test_name_registered_twice_skips_the_later_plugin(make_dist, monkeypatch):
    make_dist("octavo-clash-plugin", {"clash": "clash_plugin"}, {"clash_plugin": """
        @hookimpl
        def register_schedulers(register):
            register("clash-own", "octavo.engine.scheduler:FCFSScheduler")

        @hookimpl
        def register_attention_backends(register):
            register("torch", "clash_plugin:Backend")
        """})
    pm = load(monkeypatch, "clash")
    assert failure(pm, "clash") == (
        "attention backend 'torch' registered twice: by plugin 'octavo.plugins.defaults' "
        "(distribution 'octavo-core') and by plugin 'clash' (distribution "
        "'octavo-clash-plugin') (pass override=True to replace it)")
    assert pm.registry("register_attention_backends").entry("torch").plugin == (
        "octavo.plugins.defaults")
    assert "clash-own" not in pm.registry("register_schedulers")  # all or nothing


def test_override_replaces_a_builtin_in_place_and_is_logged(make_dist, monkeypatch, caplog):
    make_dist("octavo-over-plugin", {"aaa-over": "over_plugin"}, {"over_plugin": """
        from octavo.engine.scheduler import FCFSScheduler
        from octavo.model_loader.weights import WeightFormat

        class MyFCFS(FCFSScheduler):
            pass

        @hookimpl
        def register_schedulers(register):
            register("fcfs", MyFCFS, override=True)

        @hookimpl
        def register_weight_formats(register):  # sorts before 'models', which registers it
            register("*.bin", "octavo_models.weights:SafetensorsFormat", override=True)
        """})
    with caplog.at_level(logging.INFO, logger="octavo.plugins.registry"):
        pm = load(monkeypatch, "aaa-over", "models")
    schedulers = pm.registry("register_schedulers")
    assert schedulers.names() == ["fcfs", "priority"]  # same place
    entry = schedulers.entry("fcfs")
    assert entry.plugin == "aaa-over" and entry.replaces.plugin == "octavo.plugins.defaults"
    assert schedulers.get("fcfs").__name__ == "MyFCFS"
    formats = pm.registry("register_weight_formats")
    assert formats.entry("*.bin").plugin == "aaa-over"
    assert formats.entry("*.bin").replaces.plugin == "models"
    assert ("scheduler 'fcfs' of plugin 'octavo.plugins.defaults' (distribution 'octavo-core') "
            "is overridden by plugin 'aaa-over' (distribution 'octavo-over-plugin')"
            ) in caplog.text
    assert pm.plugins["aaa-over"].registered == {"register_schedulers": ["fcfs"],
                                                 "register_weight_formats": ["*.bin"]}


def test_reference_that_does_not_import(make_dist, monkeypatch):
    make_dist("octavo-ghost-plugin", {"ghost": "ghost_plugin"}, {"ghost_plugin": """
        @hookimpl
        def register_models(register):
            register("GhostForCausalLM", "ghost_plugin_missing.model:GhostForCausalLM")
            register("TypoForCausalLM", "ghost_plugin:TypoForCausalLm")
        """})
    registry = load(monkeypatch, "ghost").registry("register_models")
    assert "GhostForCausalLM" in registry  # registering is lazy: nothing imported yet
    with pytest.raises(PluginError) as err:
        registry.get("GhostForCausalLM")
    assert str(err.value).startswith(
        "model 'GhostForCausalLM' from plugin 'ghost' (distribution 'octavo-ghost-plugin'): "
        "cannot import 'ghost_plugin_missing.model:GhostForCausalLM': ModuleNotFoundError")
    with pytest.raises(PluginError, match="'TypoForCausalLM' from plugin 'ghost' .*"
                                          "AttributeError.*TypoForCausalLm"):
        registry.get("TypoForCausalLM")


def test_malformed_reference_fails_at_registration(make_dist, monkeypatch):
    make_dist("octavo-colon-plugin", {"colon": "colon_plugin"}, {"colon_plugin": """
        @hookimpl
        def register_swappers(register):
            register("disk", "colon_plugin.DiskSwapper")
        """})
    reason = failure(load(monkeypatch, "colon"), "colon")
    assert reason.startswith("registered swapper 'disk' as 'colon_plugin.DiskSwapper', which")


def test_class_that_does_not_implement_the_interface(make_dist, monkeypatch):
    make_dist("octavo-wrong-plugin", {"wrong": "wrong_plugin"}, {"wrong_plugin": """
        from octavo.attention.base import AttentionBackend
        from octavo.model_loader.weights import WeightFormat

        class NotABackend:
            def forward(self, *args):
                return None

        class HalfABackend(AttentionBackend):  # forgets forward
            name = "half"

        class NotQuiteAFormat(WeightFormat):  # forgets iter_weights
            name = "txt"

        @hookimpl
        def register_attention_backends(register):
            register("duck", "wrong_plugin:NotABackend")
            register("half", HalfABackend)

        @hookimpl
        def register_weight_formats(register):
            register("*.txt", NotQuiteAFormat)
        """})
    pm = load(monkeypatch, "wrong")
    backends = pm.registry("register_attention_backends")
    where = re.escape("from plugin 'wrong' (distribution 'octavo-wrong-plugin')")
    with pytest.raises(PluginError, match=rf"attention backend 'duck' {where}: .*NotABackend.* "
                                          r"does not implement octavo.attention.base:"
                                          r"AttentionBackend \(it is not a subclass\)"):
        backends.get("duck")
    with pytest.raises(PluginError, match=rf"attention backend 'half' {where}: HalfABackend does "
                                          r"not implement .*abstract methods left: forward"):
        backends.get("half")
    with pytest.raises(PluginError, match=rf"weight format '\*.txt' {where}: NotQuiteAFormat "
                                          r"does not implement .*: iter_weights"):
        pm.registry("register_weight_formats").get("*.txt")


def test_unknown_hook_is_caught_by_check_pending(make_dist, monkeypatch):
    make_dist("octavo-typo-plugin", {"typo": "typo_plugin"}, {"typo_plugin": """
        @hookimpl
        def register_model(register):  # missing "s"
            register("X", "typo_plugin:X")
        """})
    assert "unknown hook 'register_model'" in failure(load(monkeypatch, "typo"), "typo")


def test_hook_with_wrong_arguments(make_dist, monkeypatch):
    make_dist("octavo-args-plugin", {"args": "args_plugin"}, {"args_plugin": """
        @hookimpl
        def register_models(reg):
            reg("X", "args_plugin:X")
        """})
    assert "register_models(reg)" in failure(load(monkeypatch, "args"), "args")


def test_hook_that_raises(make_dist, monkeypatch):
    make_dist("octavo-raise-plugin", {"raiser": "raise_plugin"}, {"raise_plugin": """
        @hookimpl
        def register_schedulers(register):
            raise KeyError("no config")
        """})
    assert failure(load(monkeypatch, "raiser"), "raiser") == (
        "register_schedulers raised KeyError: 'no config'")


def test_denylist_leaves_a_broken_plugin_out_silently(make_dist, monkeypatch, caplog):
    make_dist("octavo-boom-plugin", {"boom": "boom_plugin"},
              {"boom_plugin": "raise ImportError('needs libfoo')\n"})
    monkeypatch.setenv("OCTAVO_DISABLE_PLUGINS", "boom")
    with caplog.at_level(logging.WARNING, logger="octavo.plugins"):
        pm = OctavoPluginManager().load()
    assert pm.disabled["boom"].reason == "disabled by OCTAVO_DISABLE_PLUGINS"
    assert "boom" not in pm.failed and "example" in pm.plugins
    assert caplog.text == ""


COMMAND_PLUGIN = """
    import click

    @hookimpl
    def register_commands(cli):
        @cli.command(name={name!r})
        def command():
            click.echo("hi")
    """


def test_command_name_used_twice_keeps_the_first(make_dist, monkeypatch, caplog):
    make_dist("octavo-cmd-a", {"cmd-a": "cmd_a"}, {"cmd_a": COMMAND_PLUGIN.format(name="hello")})
    make_dist("octavo-cmd-b", {"cmd-b": "cmd_b"}, {"cmd_b": COMMAND_PLUGIN.format(name="hello")})
    monkeypatch.setenv("OCTAVO_PLUGINS", "cmd-a,cmd-b")
    with caplog.at_level(logging.WARNING, logger="octavo.plugins.manager"):
        result = CliRunner().invoke(cli, ["hello"])
    assert result.exit_code == 0 and result.output == "hi\n"
    assert ("command 'hello' of plugin 'cmd-b' (distribution 'octavo-cmd-b') is left out: "
            "plugin 'cmd-a' (distribution 'octavo-cmd-a') already adds it") in caplog.text


def test_command_hook_that_raises_leaves_the_others(make_dist, monkeypatch):
    make_dist("octavo-cmd-a", {"cmd-a": "cmd_a"}, {"cmd_a": """
        @hookimpl
        def register_commands(cli):
            raise RuntimeError("no click today")
        """})
    monkeypatch.setenv("OCTAVO_PLUGINS", "cmd-a,server")
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "serve" in result.output


def test_command_that_shadows_a_builtin(make_dist, monkeypatch):
    make_dist("octavo-cmd-a", {"cmd-a": "cmd_a"}, {"cmd_a": COMMAND_PLUGIN.format(name="plugins")})
    monkeypatch.setenv("OCTAVO_PLUGINS", "cmd-a")
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 1
    assert ("Error: plugin 'cmd-a' (distribution 'octavo-cmd-a') adds command 'plugins', which "
            "octavo already has") in result.output


def test_cli_reports_a_broken_plugin_and_still_works(make_dist, monkeypatch):
    make_dist("octavo-boom-plugin", {"boom": "boom_plugin"},
              {"boom_plugin": "raise ImportError('needs libfoo')\n"})
    monkeypatch.setenv("OCTAVO_PLUGINS", "boom")
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    assert ("boom  (octavo-boom-plugin 1.2.3)  failed: entry point 'boom_plugin' failed to "
            "import: ImportError: needs libfoo") in result.output.splitlines()
    assert CliRunner().invoke(cli, ["--help"]).exit_code == 0
