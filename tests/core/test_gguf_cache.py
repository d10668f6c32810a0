"""GGUF config/tokenizer conversions are cached by file identity and reloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from octavo.model_loader import gguf_cache


class Saved:
    """Stands in for a transformers object: save_pretrained writes one JSON file."""

    def __init__(self, value):
        self.value = value

    def save_pretrained(self, folder):
        Path(folder, "obj.json").write_text(json.dumps(self.value))

    @classmethod
    def from_pretrained(cls, folder):
        return cls(json.loads(Path(folder, "obj.json").read_text()))


@pytest.fixture
def gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("OCTAVO_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    return path


def test_converts_once_then_loads_the_saved_copy(gguf):
    calls = []

    def convert():
        calls.append(1)
        return Saved({"vocab": 5})

    first = gguf_cache.load_converted(gguf, "config", convert, Saved.from_pretrained)
    second = gguf_cache.load_converted(gguf, "config", convert, Saved.from_pretrained)
    assert first.value == second.value == {"vocab": 5} and len(calls) == 1
    assert gguf_cache.converted_folder(gguf, "config").is_dir()


def test_a_changed_file_is_converted_again(gguf):
    gguf_cache.load_converted(gguf, "config", lambda: Saved(1), Saved.from_pretrained)
    gguf.write_bytes(b"GGUF2")
    os.utime(gguf, ns=(1, 1))
    again = gguf_cache.load_converted(gguf, "config", lambda: Saved(2), Saved.from_pretrained)
    assert again.value == 2


def test_objects_that_cannot_be_saved_are_returned_uncached(gguf):
    obj = object()
    assert gguf_cache.load_converted(gguf, "tokenizer", lambda: obj, Saved.from_pretrained) is obj
    assert not gguf_cache.converted_folder(gguf, "tokenizer").exists()


def test_a_damaged_entry_is_replaced(gguf):
    folder = gguf_cache.converted_folder(gguf, "config")
    folder.mkdir(parents=True)  # no obj.json inside
    got = gguf_cache.load_converted(gguf, "config", lambda: Saved(3), Saved.from_pretrained)
    assert got.value == 3
    assert Saved.from_pretrained(folder).value == 3
