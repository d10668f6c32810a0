"""Tensor parallelism over two real ranks (gloo on CPU): logits equal HF's."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TINY = dict(vocab_size=301, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=128)


def _config(num_kv_heads: int, tied: bool):
    from transformers import Qwen2Config

    return Qwen2Config(**TINY, num_key_value_heads=num_kv_heads, tie_word_embeddings=tied,
                       architectures=["Qwen2ForCausalLM"])


def _rank_main(rank: int, world: int, init_file: str, num_kv_heads: int, tied: bool,
               results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        from octavo.attention.torch_backend import TorchAttentionBackend
        from octavo.modeling import ModelContext, ParallelConfig
        from octavo.testing.model_suite import ModelConformanceSuite, PagedBatchRunner
        from octavo_models.llama import LlamaForCausalLM

        config = _config(num_kv_heads, tied)
        suite = ModelConformanceSuite()
        hf = suite.build_hf_model(config)  # seeded: identical on every rank
        ctx = ModelContext(attention_backend=TorchAttentionBackend,
                           parallel=ParallelConfig(tensor_parallel_size=world, rank=rank))
        model = LlamaForCausalLM(config, ctx).eval()
        model.load_weights(hf.state_dict().items())
        prompts = suite.prompts(config)
        runner = PagedBatchRunner(model, block_size=4, num_blocks=64)
        logits = runner.step(list(enumerate(prompts)))
        decode = runner.step([(i, [int(p[0])]) for i, p in enumerate(prompts)])
        if rank == 0:
            from octavo.testing.model_suite import hf_logits

            expected = torch.cat([hf_logits(hf, p) for p in prompts])
            expected_decode = torch.stack([hf_logits(hf, p + [p[0]])[-1] for p in prompts])
            results.put((float((logits - expected).abs().max()),
                         float((decode - expected_decode).abs().max())))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("num_kv_heads, tied", [(2, False), (1, True)],
                         ids=["kv-split", "kv-replicated-tied"])
def test_two_rank_tensor_parallel_matches_hf(tmp_path, num_kv_heads, tied):
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_rank_main, args=(2, str(tmp_path / "init"), num_kv_heads, tied, results),
                       nprocs=2, join=True, start_method="spawn")
    prefill_err, decode_err = results.get()
    assert prefill_err < 1e-4 and decode_err < 1e-4, (prefill_err, decode_err)
