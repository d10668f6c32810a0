"""Conformance suite for weight formats; a weight-format plugin subclasses it.

The suite makes a tiny checkpoint (a random tiny Llama from transformers, saved with
``save_pretrained``) and reads its ``model.safetensors`` as the reference: HF parameter names
and tensors. The test class writes the same tensors in its own format
(:meth:`WeightFormatSuite.write_checkpoint`), and the registered format must read them back —
every name once, equal to the reference (exactly, unless ``atol`` allows a lossy format) —
from files its registered glob matches, and the loader must pick it for a folder holding
them. Usage::

    from octavo.testing.weight_format_suite import WeightFormatSuite

    class TestNpz(WeightFormatSuite):
        registered_name = "*.npz"

        def write_checkpoint(self, folder, config, tensors):
            np.savez(folder / "model.npz", **{k: v.numpy() for k, v in tensors.items()})
            return [folder / "model.npz"]
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from octavo.model_loader.weights import WeightFormat
from octavo.testing.suite import ConformanceSuite

__all__ = ["WeightFormatSuite", "reference_checkpoint"]

TINY_CONFIG = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                   tie_word_embeddings=False)


def reference_checkpoint(folder: Path, seed: int = 0) -> tuple[Any, dict[str, torch.Tensor]]:
    """Save a random tiny Llama to ``folder`` with ``save_pretrained``; return its HF config
    and the tensors of its ``model.safetensors`` (the reference every format must equal)."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**TINY_CONFIG)).eval()
    model.save_pretrained(folder)
    return model.config, load_file(str(folder / "model.safetensors"))


class WeightFormatSuite(ConformanceSuite):
    """Conformance tests for a :class:`~octavo.model_loader.weights.WeightFormat`, built as
    the loader builds it: ``cls()``, then ``iter_weights(path, hf_config)`` per file.

    Attributes:
        registered_name: the format's registered file glob (required).
        atol: how far a lossy format may be from the reference (0: exact).
    """

    registry_hook = "register_weight_formats"
    atol: ClassVar[float] = 0.0

    # -- hook for subclasses --------------------------------------------------------------------
    def write_checkpoint(self, folder: Path, config: Any,
                         tensors: Mapping[str, torch.Tensor]) -> list[Path]:
        """Write ``tensors`` (HF names) into ``folder`` in this format; return the files."""
        raise NotImplementedError(f"{type(self).__name__} must implement write_checkpoint()")

    def tolerance(self, name: str) -> float:
        """``atol`` for the tensor ``name`` (override for a format that stores some tensors
        lossily)."""
        return self.atol

    # -- fixtures ----------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def checkpoint(cls, tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[Any, dict[str, torch.Tensor], list[Path]]:
        """``(config, reference tensors, files written in this format)``, once per class."""
        config, tensors = reference_checkpoint(tmp_path_factory.mktemp("reference"))
        folder = tmp_path_factory.mktemp(cls.__name__)
        files = [Path(f) for f in cls().write_checkpoint(folder, config, dict(tensors))]
        return config, tensors, files

    def read(self, config: Any, files: list[Path]) -> dict[str, torch.Tensor]:
        fmt = self.implementation()()
        got: dict[str, torch.Tensor] = {}
        for path in files:
            for name, tensor in fmt.iter_weights(path, config):
                assert isinstance(name, str) and isinstance(tensor, torch.Tensor), (name, tensor)
                assert name not in got, f"{name} yielded twice"
                got[name] = tensor
        return got

    # -- tests --------------------------------------------------------------------------------
    def test_is_a_weight_format(self) -> None:
        cls = self.implementation()
        assert issubclass(cls, WeightFormat)
        assert isinstance(cls.name, str) and cls.name
        cls()  # the loader builds it without arguments

    def test_files_match_the_registered_glob(self, checkpoint) -> None:
        _, _, files = checkpoint
        assert files, "write_checkpoint wrote no file"
        for path in files:
            assert path.is_file(), path
            assert fnmatch(path.name, self.registered_name), (
                f"{path.name} does not match the registered glob {self.registered_name!r}")

    def test_reads_every_tensor_equal_to_the_reference(self, checkpoint) -> None:
        config, reference, files = checkpoint
        got = self.read(config, files)
        assert set(got) == set(reference), (
            f"missing: {sorted(set(reference) - set(got))}; "
            f"unexpected: {sorted(set(got) - set(reference))}")
        for name, want in reference.items():
            tensor = got[name]
            assert tensor.shape == want.shape, f"{name}: {tuple(tensor.shape)}"
            assert tensor.dtype.is_floating_point, f"{name}: {tensor.dtype}"
            torch.testing.assert_close(tensor.float(), want.float(), atol=self.tolerance(name),
                                       rtol=0, msg=lambda m, name=name: f"{name}: {m}")

    def test_reading_twice_gives_the_same_tensors(self, checkpoint) -> None:
        config, _, files = checkpoint
        first, second = self.read(config, files), self.read(config, files)
        for name, tensor in first.items():
            torch.testing.assert_close(second[name], tensor, atol=0, rtol=0)

    def test_the_loader_picks_this_format(self, checkpoint) -> None:
        """For a file on its own, the first registered glob matching its name is this one."""
        from octavo.model_loader.loader import find_weight_files
        from octavo.model_loader.source import ModelSource

        _, _, files = checkpoint
        fmt, found = find_weight_files(ModelSource("file", files[0]))
        assert isinstance(fmt, self.implementation()) and found == [files[0]]
