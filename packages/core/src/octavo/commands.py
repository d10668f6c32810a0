"""``octavo generate`` and ``octavo chat``; engine options map onto the settings fields."""

from __future__ import annotations

import functools
import logging
import types
import typing
from typing import Any, Literal

import click

from octavo.config import CacheSettings, ModelSettings, ParallelSettings, SchedulerSettings
from octavo.plugins.hookspecs import hookimpl

ENGINE_SETTINGS = (ModelSettings, CacheSettings, SchedulerSettings, ParallelSettings)
# Short spellings beside ``--field-name``, as vLLM users type them.
SHORT_FLAGS = {"tensor_parallel_size": "-tp"}

# Loggers of Octavo's own distributions, shown at --log-level in generate and chat (others
# stay at WARNING, so transformers' INFO chatter does not bury the engine's).
OCTAVO_LOGGERS = ("octavo", "octavo_models", "octavo_cpu", "octavo_triton", "octavo_cuda",
                  "octavo_quant")


def show_engine_logs(level: str) -> None:
    """Print WARNINGs of every library, and Octavo's own records from ``level`` up, to stderr:
    which backend, scheduler and cache manager the engine chose and why, a kernel compiling."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    for name in OCTAVO_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


def log_level_option(func):
    return click.option("--log-level", default="info", show_default=True,
                        type=click.Choice(["debug", "info", "warning", "error"]),
                        help="Octavo's log records on stderr (others from WARNING).")(func)


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, is_flag) for a settings field annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)]), False
    if annotation is bool:
        return bool, True
    return {int: int, float: float}.get(annotation, str), False


def engine_options(func):
    """Add one ``--option`` per engine settings field (except ``model``)."""
    for settings in reversed(ENGINE_SETTINGS):
        for name, field in reversed(settings.model_fields.items()):
            if name == "model":
                continue
            kind, is_flag = _click_type(field.annotation)
            flag = "--" + name.replace("_", "-")
            decls = [f"{flag}/--no-{name.replace('_', '-')}"] if is_flag else [flag]
            decls += [SHORT_FLAGS[name]] if name in SHORT_FLAGS else []
            func = click.option(*decls, name, type=None if is_flag else kind, default=None,
                                help=field.description or f"{settings.__name__}.{name}")(func)
    return func


def build_llm(model: str | None, options: dict[str, Any]):
    """The engine, with invalid options reported as usage errors (exit status 2)."""
    from octavo.entrypoints.llm import LLM

    try:
        return LLM(model, **{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def sampling_options(func):
    @click.option("--max-tokens", type=int, default=128, show_default=True)
    @click.option("--temperature", type=float, default=0.0, show_default=True)
    @click.option("--top-p", type=float, default=1.0)
    @functools.wraps(func)
    def wrapper(*args, max_tokens, temperature, top_p, **kwargs):
        from octavo.sampling_params import SamplingParams

        try:
            params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        return func(*args, params=params, **kwargs)

    return wrapper


@click.command()
@click.argument("prompts", nargs=-1, required=True)
@click.option("-m", "--model", default=None, help="Model path or hub id (default: the demo).")
@log_level_option
@sampling_options
@engine_options
def generate(prompts, model, params, log_level, **options):
    """Complete each PROMPT and print the text."""
    show_engine_logs(log_level)
    llm = build_llm(model, options)
    try:
        outputs = llm.generate(list(prompts), params)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    for output in outputs:
        click.echo(output.outputs[0].text)


@click.command()
@click.option("-m", "--model", default=None, help="Model path or hub id (default: the demo).")
@click.option("--system", default=None, help="A system prompt.")
@log_level_option
@sampling_options
@engine_options
def chat(model, system, params, log_level, **options):
    """Chat with the model in the terminal (empty line or Ctrl-D ends)."""
    show_engine_logs(log_level)
    llm = build_llm(model, options)
    messages = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = click.prompt("you", prompt_suffix="> ", default="", show_default=False)
        except (EOFError, click.Abort):
            break
        if not line.strip():
            break
        messages.append({"role": "user", "content": line})
        try:
            (output,) = llm.chat(messages, params)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            messages.pop()
            continue
        reply = output.outputs[0].text
        click.echo(f"assistant> {reply}")
        messages.append({"role": "assistant", "content": reply})


@hookimpl
def register_commands(cli):
    cli.add_command(generate)
    cli.add_command(chat)
