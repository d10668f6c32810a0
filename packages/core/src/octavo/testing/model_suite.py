"""Model-vs-HF conformance suite: subclass it to test a model family against transformers.

Example (a third-party plugin's test file)::

    from transformers import LlamaConfig
    from octavo.testing.model_suite import ModelConformanceSuite

    class TestMyLlama(ModelConformanceSuite):
        def hf_config(self):
            return LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, architectures=["LlamaForCausalLM"])

The suite builds the HF model from the config (seeded, its weights perturbed so every tensor
matters), loads its ``state_dict`` into the Octavo model through ``load_weights``, and runs
Octavo over a hand-built paged KV cache (random, non-contiguous block ids): a packed prefill of
several prompts, decode steps, a mixed batch with chunked prefill, and greedy decoding. Each is
compared with HF's full-sequence forward in float32. Finally the whole engine: the checkpoint is
saved to a folder, loaded by :class:`octavo.LLM`, and a mixed-length batch runs with
continuous batching, chunked prefill and prefix caching on; greedy tokens must equal HF's
``generate`` and their logprobs be close.

Every architecture a plugin registers needs a suite class verifying it: Octavo's pytest plugin
collects each class's :meth:`ModelConformanceSuite.verified_architectures` (see
:mod:`octavo.testing.coverage`).

The helpers (:func:`build_attention_metadata`, :class:`PagedBatchRunner`, :func:`hf_logits`)
are usable on their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from octavo.attention.base import AttentionBackend, AttentionMetadata
from octavo.attention.torch_backend import TorchAttentionBackend
from octavo.modeling import CausalLM, ModelContext
from octavo.testing.suite import ConformanceSuite


def build_attention_metadata(
    context_lens: Sequence[int],
    query_lens: Sequence[int],
    block_tables: Sequence[Sequence[int]],
    block_size: int,
    device: torch.device | str = "cpu",
) -> AttentionMetadata:
    """Metadata for a packed batch: request ``i`` has ``context_lens[i]`` cached tokens and
    ``query_lens[i]`` new ones, stored in the blocks ``block_tables[i]``."""
    seq_lens = [c + q for c, q in zip(context_lens, query_lens)]
    starts = [0]
    for q in query_lens:
        starts.append(starts[-1] + q)
    slots: list[int] = []
    for ctx, seq_len, table in zip(context_lens, seq_lens, block_tables):
        if len(table) * block_size < seq_len:
            raise ValueError(f"block table {list(table)} too short for {seq_len} tokens")
        slots.extend(table[p // block_size] * block_size + p % block_size
                     for p in range(ctx, seq_len))
    width = max((len(t) for t in block_tables), default=0) or 1
    padded = [list(t) + [0] * (width - len(t)) for t in block_tables]
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor(padded, dtype=torch.int32, device=device),
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens, default=0),
        query_start_loc_cpu=starts,
        seq_lens_cpu=seq_lens,
    )


class PagedBatchRunner:
    """Runs a :class:`CausalLM` step by step over its own paged KV cache, like an engine.

    Blocks are handed out from a shuffled free list, so block tables are non-contiguous.
    """

    def __init__(self, model: CausalLM, *, block_size: int = 4, num_blocks: int = 64,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        spec = model.kv_cache_spec(model.config).for_rank(model.ctx.parallel)
        shape = (num_blocks, block_size, spec.num_kv_heads, spec.head_size)
        self.model = model
        self.block_size = block_size
        self.device = torch.device(device)
        self.kv_caches = [
            (torch.zeros(shape, dtype=dtype, device=device),
             torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(spec.num_layers)]
        gen = torch.Generator().manual_seed(seed)
        self.free_blocks = torch.randperm(num_blocks, generator=gen).tolist()
        self.block_tables: dict[Any, list[int]] = {}
        self.num_computed: dict[Any, int] = {}

    def _reserve(self, req_id: Any, num_tokens: int) -> list[int]:
        table = self.block_tables.setdefault(req_id, [])
        while len(table) * self.block_size < num_tokens:
            if not self.free_blocks:
                raise RuntimeError("PagedBatchRunner ran out of KV cache blocks")
            table.append(self.free_blocks.pop())
        return table

    @torch.inference_mode()
    def step(self, chunks: Sequence[tuple[Any, Sequence[int]]]) -> torch.Tensor:
        """Feed each ``(req_id, new_token_ids)`` in one packed batch.

        Returns float32 logits for every fed token, ``[total_new_tokens, vocab]``, in order.
        """
        context_lens, query_lens, tables, ids, positions = [], [], [], [], []
        for req_id, tokens in chunks:
            ctx = self.num_computed.get(req_id, 0)
            context_lens.append(ctx)
            query_lens.append(len(tokens))
            tables.append(self._reserve(req_id, ctx + len(tokens)))
            ids.extend(tokens)
            positions.extend(range(ctx, ctx + len(tokens)))
        metadata = build_attention_metadata(context_lens, query_lens, tables, self.block_size,
                                            self.device)
        hidden = self.model(torch.tensor(ids, dtype=torch.int64, device=self.device),
                            torch.tensor(positions, dtype=torch.int64, device=self.device),
                            self.kv_caches, metadata)
        for (req_id, tokens), ctx in zip(chunks, context_lens):
            self.num_computed[req_id] = ctx + len(tokens)
        return self.model.compute_logits(hidden)


@torch.inference_mode()
def hf_logits(hf_model: nn.Module, token_ids: Sequence[int]) -> torch.Tensor:
    """HF's float32 logits for every position of one sequence, ``[len, vocab]``."""
    device = next(hf_model.parameters()).device
    ids = torch.tensor([list(token_ids)], dtype=torch.int64, device=device)
    return hf_model(input_ids=ids).logits[0].float()


@torch.inference_mode()
def hf_generate(hf_model: nn.Module, prompt: Sequence[int],
                steps: int) -> tuple[list[int], list[float]]:
    """HF ``generate``'s greedy tokens for one prompt (never stopping at EOS), and each chosen
    token's logprob."""
    device = next(hf_model.parameters()).device
    out = hf_model.generate(torch.tensor([list(prompt)], device=device), max_new_tokens=steps,
                            do_sample=False, eos_token_id=None, output_logits=True,
                            return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt):].tolist()
    logprobs = [torch.log_softmax(step[0].float(), -1)[t].item()
                for step, t in zip(out.logits, tokens)]
    return tokens, logprobs


def save_checkpoint_folder(folder: Path, config: Any,
                           tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Write ``config.json`` and one ``model.safetensors`` holding ``tensors`` (a converted
    checkpoint layout, e.g. one only remote code on the hub implements)."""
    from safetensors.torch import save_file

    config.save_pretrained(folder)
    save_file({name: t.detach().cpu().contiguous().clone() for name, t in tensors},
              str(folder / "model.safetensors"))


def hf_greedy(hf_model: nn.Module, prompt: Sequence[int], steps: int) -> list[int]:
    """Greedy continuation by HF, one full-sequence forward per token."""
    tokens = list(prompt)
    for _ in range(steps):
        tokens.append(int(hf_logits(hf_model, tokens)[-1].argmax()))
    return tokens[len(prompt):]


@dataclass
class Conformance:
    """What one suite class builds once and shares between its tests."""

    config: Any
    hf_model: nn.Module
    model: CausalLM
    loaded: set[str]


class ModelConformanceSuite(ConformanceSuite):
    """Octavo model vs HF transformers. Override :meth:`hf_config`; tune the class attributes.

    Attributes:
        model_class: the Octavo model class; None looks up ``config.architectures[0]`` in the
            model registry (what the engine does).
        attention_backend: the backend class the model runs with.
        prompt_lens: lengths of the prompts packed into one prefill (different on purpose).
        weight_noise: std of the noise added to HF's random init, so biases (zero-initialized)
            and norm weights (ones) are exercised too.
        architectures: the registered architecture names this class verifies; empty means
            ``hf_config().architectures`` (set it when the checkpoint is converted, e.g. a
            remote-code layout built from a native HF model).
        engine_check: run the engine-level test (save, load with ``octavo.LLM``, generate).
        engine_prompt_lens: prompt lengths of the engine test's batch, except that the first
            prompt is a warm-up prompt of that length, sent alone beforehand, plus 3 tokens (so
            the prefix cache is hit).
        engine_options: keyword arguments of ``octavo.LLM`` (a small per-step token budget, so
            long prompts are chunked while others decode).
    """

    registry_hook = "register_models"
    architectures: tuple[str, ...] = ()
    model_class: type[CausalLM] | None = None
    attention_backend: type[AttentionBackend] = TorchAttentionBackend
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    block_size: int = 4
    num_blocks: int = 96
    prompt_lens: tuple[int, ...] = (7, 13, 3)
    decode_steps: int = 4
    atol: float = 1e-4
    rtol: float = 1e-4
    seed: int = 0
    weight_noise: float = 0.05
    engine_check: bool = True
    engine_prompt_lens: tuple[int, ...] = (14, 3, 27, 9)
    engine_max_tokens: int = 8
    engine_logprob_atol: float = 1e-3
    engine_options: ClassVar[dict[str, Any]] = dict(
        block_size=4, num_gpu_blocks_override=128, max_num_batched_tokens=16,
        enable_prefix_caching=True)

    @classmethod
    def verified_architectures(cls) -> tuple[str, ...]:
        """The registered architecture names this class verifies."""
        return tuple(cls.architectures) or tuple(cls().hf_config().architectures or ())

    @classmethod
    def verified_names(cls) -> tuple[str, ...]:
        return cls.verified_architectures()

    # ---- hooks -------------------------------------------------------------------------------

    def hf_config(self) -> Any:
        """The (tiny) HF config to test; must set ``architectures``."""
        raise NotImplementedError("subclasses return a transformers config")

    def build_hf_model(self, config: Any) -> nn.Module:
        """The HF reference model, seeded, perturbed, in eval mode and float32."""
        from transformers import AutoModelForCausalLM

        torch.manual_seed(self.seed)
        hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                              dtype=torch.float32)
        with torch.no_grad():
            for param in hf.parameters():
                param.add_(torch.randn_like(param) * self.weight_noise)
        return hf.eval().to(self.device)

    def hf_weights(self, hf_model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
        """The checkpoint tensors to load (override to test a converter)."""
        return hf_model.state_dict().items()

    def save_checkpoint(self, folder: Path, conformance: Conformance) -> None:
        """Write the checkpoint the engine test loads, with a tokenizer.

        HF's ``save_pretrained`` of the reference model; a suite that overrides
        :meth:`hf_weights` gets its converted tensors and ``conformance.config`` instead.
        """
        from octavo.testing.tiny_models import save_word_tokenizer

        if type(self).hf_weights is ModelConformanceSuite.hf_weights:
            conformance.hf_model.save_pretrained(folder)
        else:
            save_checkpoint_folder(folder, conformance.config,
                                   self.hf_weights(conformance.hf_model))
        save_word_tokenizer(folder, num_words=min(100, conformance.config.vocab_size - 3))

    def build_model(self, config: Any) -> CausalLM:
        """The Octavo model, built on ``self.device`` in ``self.dtype`` (weights not loaded).

        ``config`` is the HF config as a checkpoint carries it: like the loader, this adapts it
        once (:meth:`~octavo.modeling.CausalLM.adapt_config`) and builds from the result.
        """
        cls = self.model_class
        if cls is None:
            from octavo.plugins import models

            cls = models().get(config.architectures[0])
        ctx = ModelContext(attention_backend=self.attention_backend, dtype=self.dtype,
                           device=torch.device(self.device))
        return cls(cls.adapt_config(config), ctx).eval()

    def engine_prompts(self, config: Any) -> tuple[list[int], list[list[int]]]:
        """``(warm-up prompt, batch)``: the batch's first prompt extends the warm-up one."""
        gen = torch.Generator().manual_seed(self.seed + 2)
        warm, *batch = [torch.randint(3, config.vocab_size, (n,), generator=gen).tolist()
                        for n in (self.engine_prompt_lens[0], *self.engine_prompt_lens)]
        batch[0] = warm + batch[0][:3]
        return warm, batch

    def prompts(self, config: Any) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed + 1)
        return [torch.randint(0, config.vocab_size, (n,), generator=gen).tolist()
                for n in self.prompt_lens]

    def runner(self, model: CausalLM) -> PagedBatchRunner:
        return PagedBatchRunner(model, block_size=self.block_size, num_blocks=self.num_blocks,
                                dtype=self.dtype, device=self.device, seed=self.seed)

    def assert_logits_close(self, actual: torch.Tensor, expected: torch.Tensor,
                            what: str) -> None:
        torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(),
                                   atol=self.atol, rtol=self.rtol,
                                   msg=lambda m: f"{what}: {m}")

    # ---- shared setup --------------------------------------------------------------------------

    def build(self) -> Conformance:
        config = self.hf_config()
        hf_model = self.build_hf_model(config)
        model = self.build_model(config)
        loaded = model.load_weights(self.hf_weights(hf_model))
        return Conformance(config, hf_model, model, loaded)

    @pytest.fixture(scope="class")
    @classmethod
    def conformance(cls) -> Conformance:
        # A classmethod: a class-scoped fixture on an instance would see one instance of the
        # class while each test runs on another (pytest 10 rejects that form).
        return cls().build()

    # ---- checks (reusable with another model, e.g. a deliberately broken one) -----------------

    def check_prefill(self, hf_model: nn.Module, model: CausalLM,
                      prompts: list[list[int]]) -> None:
        """One packed prefill of all prompts; every token's logits must match HF's."""
        logits = self.runner(model).step(list(enumerate(prompts)))
        start = 0
        for i, prompt in enumerate(prompts):
            self.assert_logits_close(logits[start:start + len(prompt)],
                                     hf_logits(hf_model, prompt), f"prefill of prompt {i}")
            start += len(prompt)

    def check_decode(self, hf_model: nn.Module, model: CausalLM,
                     prompts: list[list[int]]) -> None:
        """Prefill, then batched decode steps fed HF's greedy tokens; logits match HF's."""
        runner = self.runner(model)
        logits = runner.step(list(enumerate(prompts)))
        ends = torch.tensor([len(p) for p in prompts]).cumsum(0) - 1
        seqs = [list(p) for p in prompts]
        last = logits[ends]
        for step in range(self.decode_steps):
            for i, seq in enumerate(seqs):
                expected = hf_logits(hf_model, seq)[-1]
                self.assert_logits_close(last[i], expected, f"step {step}, request {i}")
                seq.append(int(expected.argmax()))
            last = runner.step([(i, [seq[-1]]) for i, seq in enumerate(seqs)])

    # ---- tests -------------------------------------------------------------------------------

    def test_load_weights_fills_every_parameter(self, conformance: Conformance) -> None:
        names = {name for name, _ in conformance.model.named_parameters()}
        assert conformance.loaded == names, (
            f"not loaded: {sorted(names - conformance.loaded)}; "
            f"unexpected: {sorted(conformance.loaded - names)}")

    def test_unknown_weight_name_raises(self, conformance: Conformance) -> None:
        bogus = ("model.layers.0.not_a_module.weight", torch.zeros(1))
        with pytest.raises(KeyError, match="not_a_module"):
            conformance.model.load_weights([bogus])

    def test_compute_logits_is_float32(self, conformance: Conformance) -> None:
        hidden = torch.zeros(2, conformance.config.hidden_size, dtype=self.dtype,
                             device=self.device)
        logits = conformance.model.compute_logits(hidden)
        assert logits.dtype == torch.float32
        assert logits.shape == (2, conformance.config.vocab_size)

    def test_prefill_matches_hf(self, conformance: Conformance) -> None:
        self.check_prefill(conformance.hf_model, conformance.model,
                           self.prompts(conformance.config))

    def test_decode_matches_hf(self, conformance: Conformance) -> None:
        self.check_decode(conformance.hf_model, conformance.model,
                          self.prompts(conformance.config))

    def test_chunked_prefill_in_mixed_batch_matches_hf(self, conformance: Conformance) -> None:
        """A batch mixing a prompt's later chunk, a decode and a first chunk."""
        hf_model, model = conformance.hf_model, conformance.model
        a, b, c = self.prompts(conformance.config)[:3]
        runner = self.runner(model)
        cut = len(a) // 2
        runner.step([("a", a[:cut]), ("b", b)])
        b_next = int(hf_logits(hf_model, b)[-1].argmax())
        logits = runner.step([("a", a[cut:]), ("b", [b_next]), ("c", c[:2])])
        n_a = len(a) - cut
        self.assert_logits_close(logits[:n_a], hf_logits(hf_model, a)[cut:], "second chunk")
        self.assert_logits_close(logits[n_a], hf_logits(hf_model, b + [b_next])[-1], "decode")
        self.assert_logits_close(logits[n_a + 1:], hf_logits(hf_model, c[:2]), "first chunk")

    def test_greedy_tokens_match_hf(self, conformance: Conformance) -> None:
        hf_model, model = conformance.hf_model, conformance.model
        prompts = self.prompts(conformance.config)
        runner = self.runner(model)
        logits = runner.step(list(enumerate(prompts)))
        ends = torch.tensor([len(p) for p in prompts]).cumsum(0) - 1
        tokens = logits[ends].argmax(-1).tolist()
        generated = [[t] for t in tokens]
        for _ in range(self.decode_steps - 1):
            tokens = runner.step([(i, [t]) for i, t in enumerate(tokens)]).argmax(-1).tolist()
            for out, t in zip(generated, tokens):
                out.append(t)
        expected = [hf_greedy(hf_model, p, self.decode_steps) for p in prompts]
        assert generated == expected

    def test_engine_matches_hf_generate(self, conformance: Conformance,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
        """Saved, loaded by ``octavo.LLM``, run as one mixed-length batch with continuous
        batching, chunked prefill and prefix caching: tokens equal HF ``generate``'s."""
        if not self.engine_check:
            pytest.skip("engine_check is off for this suite class")
        from octavo import LLM, SamplingParams

        folder = tmp_path_factory.mktemp(type(self).__name__)
        self.save_checkpoint(folder, conformance)
        warm, batch = self.engine_prompts(conformance.config)
        steps = self.engine_max_tokens
        llm = LLM(str(folder), device=self.device, dtype=_DTYPE_NAMES[self.dtype],
                  attention_backend=self.attention_backend.name, **self.engine_options)
        params = SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True, logprobs=1)
        llm.generate([warm], params)
        outputs = llm.generate(batch, params)
        assert outputs[0].metrics.num_cached_tokens > 0, "the shared prefix was not cached"
        for i, (prompt, out) in enumerate(zip(batch, outputs)):
            tokens, logprobs = hf_generate(conformance.hf_model, prompt, steps)
            completion = out.outputs[0]
            assert completion.token_ids == tokens, f"prompt {i} (length {len(prompt)})"
            got = [completion.logprobs[k][t].logprob for k, t in enumerate(tokens)]
            assert got == pytest.approx(logprobs, abs=self.engine_logprob_atol), f"prompt {i}"
        kv = llm.engine.core.scheduler.kv_cache
        assert kv.num_free_blocks == kv.num_blocks


class LongPromptSuite(ModelConformanceSuite):
    """The suite with prompts past a hundred tokens, and caches large enough to hold them
    (for larger configs, typically marked slow)."""

    prompt_lens = (60, 130, 17)
    engine_prompt_lens = (40, 5, 120, 33)
    num_blocks = 256
    engine_options = dict(ModelConformanceSuite.engine_options, num_gpu_blocks_override=512)


_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
