"""Every hook in hookspecs.py, exercised through the installed example plugin.

``test_every_hook_is_tested`` fails when a hookspec has no ``test_hook_<name>`` here, or when
the example plugin does not implement it.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from octavo.attention.base import AttentionMetadata
from octavo.attention.torch_backend import write_kv_cache
from octavo.cli import cli
from octavo.engine.scheduler import Scheduler
from octavo.modeling import CausalLM, ModelContext
from octavo.plugins import (
    REGISTRY_HOOKS,
    attention_backends,
    get_plugin_manager,
    hookspecs,
    kv_cache_managers,
    layer_ops,
    models,
    platforms,
    quantization_methods,
    schedulers,
    swappers,
    weight_formats,
)
from octavo.plugins.registry import import_ref

EXAMPLE = ("example", "octavo-example-plugin")
HOOKS = sorted(name for name, obj in vars(hookspecs).items() if hasattr(obj, "octavo_spec"))


pytestmark = pytest.mark.usefixtures("fresh_plugins")


def test_hookspecs_are_found():
    assert len(HOOKS) >= 8 and "register_commands" in HOOKS
    # Every hook but register_commands fills a registry with a declared interface.
    assert set(REGISTRY_HOOKS) | {"register_commands"} == set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_tested(hook):
    test = globals().get(f"test_hook_{hook}")
    assert callable(test), f"hook {hook} has no test: add test_hook_{hook} to {__name__}"
    assert hook in get_plugin_manager().plugins["example"].hooks, (
        f"the example plugin (tests/plugins/octavo-example-plugin) does not implement {hook}")


def example_class(hook: str, name: str) -> type:
    """Resolve ``name`` from ``hook``'s registry, checking it came from the example plugin."""
    registry = get_plugin_manager().registry(hook)
    entry = registry.entry(name)
    assert (entry.plugin, entry.distribution) == EXAMPLE
    cls = registry.get(name)
    assert issubclass(cls, import_ref(REGISTRY_HOOKS[hook][1]))
    return cls


# -- helpers: a paged batch --------------------------------------------------------------------
def paged_batch(seq_lens, query_lens, block_size, num_blocks, gen):
    """Metadata for requests whose last ``query_lens[i]`` of ``seq_lens[i]`` tokens are new."""
    max_blocks = max(-(-s // block_size) for s in seq_lens)
    perm = torch.randperm(num_blocks, generator=gen)
    block_tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    slots, used = [], 0
    for i, (seq_len, query_len) in enumerate(zip(seq_lens, query_lens)):
        n = -(-seq_len // block_size)
        block_tables[i, :n] = perm[used:used + n].to(torch.int32)
        used += n
        for pos in range(seq_len - query_len, seq_len):
            slots.append(int(block_tables[i, pos // block_size]) * block_size + pos % block_size)
    starts = [0]
    for query_len in query_lens:
        starts.append(starts[-1] + query_len)
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=block_tables, max_query_len=max(query_lens), max_seq_len=max(seq_lens),
        query_start_loc_cpu=starts, seq_lens_cpu=list(seq_lens))


def context_slots(metadata, query_lens, block_size):
    """Slots of the tokens already in the cache (before each request's new ones)."""
    slots = []
    for i, (seq_len, query_len) in enumerate(zip(metadata.seq_lens_cpu, query_lens)):
        for pos in range(seq_len - query_len):
            block = int(metadata.block_tables[i, pos // block_size])
            slots.append(block * block_size + pos % block_size)
    return torch.tensor(slots, dtype=torch.int64)


# -- one test per hook -------------------------------------------------------------------------
@pytest.mark.parametrize("sliding_window", [None, 3])
def test_hook_register_attention_backends(sliding_window):
    cls = example_class("register_attention_backends", "example-sdpa")
    torch_cls = attention_backends().get("torch")
    assert cls.priority < torch_cls.priority  # never displaces core's default when unnamed
    assert cls.supports("cpu", torch.float32, 8) and not cls.supports("cpu", torch.float16, 8)

    gen = torch.Generator().manual_seed(0)
    num_heads, num_kv_heads, head_size, block_size, num_blocks = 4, 2, 8, 4, 16
    seq_lens, query_lens = [7, 5, 9], [7, 1, 3]  # a prefill, a decode, a chunk
    meta = paged_batch(seq_lens, query_lens, block_size, num_blocks, gen)
    key_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_size, generator=gen)
    value_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_size, generator=gen)
    ctx = context_slots(meta, query_lens, block_size)
    write_kv_cache(torch.randn(len(ctx), num_kv_heads, head_size, generator=gen),
                   torch.randn(len(ctx), num_kv_heads, head_size, generator=gen),
                   key_cache, value_cache, ctx)
    n = sum(query_lens)
    q = torch.randn(n, num_heads, head_size, generator=gen)
    k = torch.randn(n, num_kv_heads, head_size, generator=gen)
    v = torch.randn(n, num_kv_heads, head_size, generator=gen)

    kwargs = dict(sliding_window=sliding_window)
    ref_k, ref_v = key_cache.clone(), value_cache.clone()
    ref = torch_cls(num_heads, head_size, num_kv_heads, head_size ** -0.5, **kwargs).forward(
        q, k, v, ref_k, ref_v, meta)
    out = cls(num_heads, head_size, num_kv_heads, head_size ** -0.5, **kwargs).forward(
        q, k, v, key_cache, value_cache, meta)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(key_cache, ref_k)
    torch.testing.assert_close(value_cache, ref_v)
    with pytest.raises(ValueError, match="soft-capping"):
        cls(num_heads, head_size, num_kv_heads, 1.0, logits_soft_cap=30.0)


def dense_reference(weights, ids_per_seq, num_heads, num_kv_heads):
    """The example model computed densely per sequence, without a KV cache."""
    outs = []
    for ids in ids_per_seq:
        h = weights["embed_tokens.weight"][ids]  # [s, hidden]
        head = h.shape[1] // num_heads
        q, k, v = (h @ weights["qkv_proj.weight"].T).split(
            [num_heads * head, num_kv_heads * head, num_kv_heads * head], dim=-1)
        q = q.view(-1, num_heads, head).transpose(0, 1)  # [H, s, D]
        k = k.view(-1, num_kv_heads, head).transpose(0, 1).repeat_interleave(
            num_heads // num_kv_heads, 0)
        v = v.view(-1, num_kv_heads, head).transpose(0, 1).repeat_interleave(
            num_heads // num_kv_heads, 0)
        scores = q @ k.transpose(1, 2) / math.sqrt(head)
        causal = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v  # [H, s, D]
        h = h + attn.transpose(0, 1).reshape(len(ids), -1) @ weights["o_proj.weight"].T
        outs.append(h @ weights["lm_head.weight"].T)
    return torch.cat(outs)


TINY = SimpleNamespace(vocab_size=32, hidden_size=16, num_attention_heads=4,
                       num_key_value_heads=2)


def random_weights(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"embed_tokens.weight": torch.randn(32, 16, generator=gen),
            "qkv_proj.weight": torch.randn(32, 16, generator=gen) * 0.3,  # q 16 + k 8 + v 8
            "o_proj.weight": torch.randn(16, 16, generator=gen) * 0.3,
            "lm_head.weight": torch.randn(32, 16, generator=gen)}


def run_prefill(model, ids_per_seq, block_size=4, num_blocks=8):
    spec = model.kv_cache_spec(TINY)
    caches = [(torch.zeros(num_blocks, block_size, spec.num_kv_heads, spec.head_size),
               torch.zeros(num_blocks, block_size, spec.num_kv_heads, spec.head_size))]
    lens = [len(ids) for ids in ids_per_seq]
    meta = paged_batch(lens, lens, block_size, num_blocks, torch.Generator().manual_seed(1))
    input_ids = torch.tensor([t for ids in ids_per_seq for t in ids])
    positions = torch.cat([torch.arange(n) for n in lens])
    return model.compute_logits(model(input_ids, positions, caches, meta))


def test_hook_register_models():
    cls = example_class("register_models", "OctavoExampleForCausalLM")
    assert issubclass(cls, CausalLM)
    model = cls(TINY, ModelContext(attention_backend=attention_backends().get("torch")))
    weights = random_weights()
    assert model.load_weights(weights.items()) == set(weights)
    ids_per_seq = [[1, 5, 9, 2, 7], [3, 3, 30]]
    logits = run_prefill(model, ids_per_seq)
    assert logits.shape == (8, 32) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, dense_reference(weights, ids_per_seq, 4, 2))


def test_hook_register_layer_ops(monkeypatch):
    from octavo.layers import RMSNorm, rms_norm
    from octavo.layers.layer_ops import LAYER_OPS_ENV, find_layer_op

    cls = example_class("register_layer_ops", "example-ops")
    assert layer_ops().get("example-ops") is cls and cls.implemented_ops() == ("rms_norm",)
    calls = []
    original = cls.rms_norm
    monkeypatch.setattr(cls, "rms_norm", staticmethod(
        lambda *args: calls.append(args) or original(*args)))
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    norm = RMSNorm(16, 1e-5)
    norm.weight.copy_(torch.linspace(0.5, 1.5, 16))

    monkeypatch.delenv(LAYER_OPS_ENV, raising=False)
    assert find_layer_op("rms_norm", x) is not cls.rms_norm  # negative priority: only if named
    monkeypatch.setenv(LAYER_OPS_ENV, "example-ops")
    assert find_layer_op("rms_norm", x) is cls.rms_norm
    assert find_layer_op("rms_norm", x.double()) is None  # float64 is not supported
    assert find_layer_op("rotary", x) is None  # not implemented by this provider
    out = norm(x)  # RMSNorm.forward asks for the op
    assert len(calls) == 1
    torch.testing.assert_close(out, rms_norm(x, norm.weight, 1e-5))
    monkeypatch.setenv(LAYER_OPS_ENV, "torch")
    assert find_layer_op("rms_norm", x) is None
    with pytest.raises(ValueError, match="unknown layer op 'nope'"):
        find_layer_op("nope", x)


def test_hook_register_quantization_methods():
    cls = example_class("register_quantization_methods", "example_int8")
    from octavo_example_plugin.quantization import quantize_int8

    assert quantization_methods().get("example_int8") is cls
    method = cls.from_config({"quant_method": "example_int8", "bits": 8})
    layer = nn.Module()
    method.create_weights(layer, 16, 8, torch.float32, torch.device("cpu"))
    assert layer.qweight.shape == (8, 16) and layer.qweight.dtype == torch.int8
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(8, 16, generator=gen), torch.randn(8, generator=gen)
    qweight, scales = quantize_int8(weight)
    layer.qweight.copy_(qweight)
    layer.scales.copy_(scales)
    x = torch.randn(5, 16, generator=gen)
    out = method.apply(layer, x, bias)
    torch.testing.assert_close(out, F.linear(x, qweight.float() * scales[:, None], bias))
    # Rounding moves each weight by at most half a step: bound the error against float.
    bound = 0.5 * x.abs().sum(-1, keepdim=True) * scales[None, :]  # [5, 8]
    assert ((out - F.linear(x, weight, bias)).abs() <= bound + 1e-5).all()
    with pytest.raises(ValueError, match="bits=8"):
        cls.from_config({"bits": 4})


def test_hook_register_weight_formats(tmp_path):
    cls = example_class("register_weight_formats", "*.npz")
    weights = random_weights(seed=2)
    path = tmp_path / "model.npz"
    np.savez(path, **{name: t.numpy() for name, t in weights.items()})
    assert "*.npz" in weight_formats() and path.match("*.npz")
    loaded = dict(cls().iter_weights(path, TINY))
    assert loaded.keys() == weights.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)
    # The format feeds a model end to end.
    model = models().get("OctavoExampleForCausalLM")(
        TINY, ModelContext(attention_backend=attention_backends().get("example-sdpa")))
    assert model.load_weights(cls().iter_weights(path, TINY)) == set(weights)
    torch.testing.assert_close(run_prefill(model, [[4, 8, 15, 16, 23]]),
                               dense_reference(weights, [[4, 8, 15, 16, 23]], 4, 2))


def test_hook_register_schedulers():
    cls = example_class("register_schedulers", "example-fcfs")
    assert schedulers().get("example-fcfs") is cls
    assert issubclass(cls, Scheduler) and not issubclass(cls, schedulers().get("fcfs"))


def test_hook_register_kv_cache_managers():
    cls = example_class("register_kv_cache_managers", "example-paged")
    assert kv_cache_managers().get("example-paged") is cls
    assert issubclass(cls, kv_cache_managers().get("paged"))


def test_hook_register_swappers():
    cls = example_class("register_swappers", "example-host")
    assert swappers().get("example-host") is cls
    assert issubclass(cls, swappers().get("host"))


def test_hook_register_platforms():
    from octavo.platforms import CpuPlatform, Platform, resolve_platform

    cls = example_class("register_platforms", "example-cpu")
    assert platforms().get("example-cpu") is cls
    assert issubclass(cls, Platform) and issubclass(cls, CpuPlatform)
    platform = resolve_platform("example-cpu")  # what device="example-cpu" selects
    assert isinstance(platform, cls) and platform.device() == torch.device("cpu")
    assert platform.default_dtype(None) == torch.float32
    assert platform.attention_backends == ("example-sdpa",)


def test_hook_register_commands():
    pm = get_plugin_manager()
    command, info = pm.commands()["example-registered"]
    assert (info.name, info.distribution) == EXAMPLE
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "example-registered" in result.output
    result = CliRunner().invoke(cli, ["example-registered"])
    assert result.exit_code == 0, result.output
    assert sorted(result.output.splitlines()) == sorted([
        "model: OctavoExampleForCausalLM", "attention backend: example-sdpa",
        "quantization method: example_int8", "weight format: *.npz",
        "scheduler: example-fcfs", "KV cache manager: example-paged", "swapper: example-host",
        "layer ops: example-ops", "platform: example-cpu"])
