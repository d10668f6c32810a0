"""Core's registered schedulers, KV cache managers, swappers, quantization method and
platforms, each run through its conformance suite from ``octavo.testing`` (the suites a plugin author runs)."""

from __future__ import annotations

import pytest
import torch

from octavo.engine.scheduler import FCFSScheduler
from octavo.kv_cache.manager import PagedKVCacheManager
from octavo.kv_cache.swapper import HostSwapper
from octavo.layers.quantization import UnquantizedMethod
from octavo.model_loader.weights import WeightFormat
from octavo.testing.kv_cache_suite import KVCacheManagerSuite
from octavo.testing.platform_suite import PlatformSuite
from octavo.testing.quantization_suite import QuantizationMethodSuite
from octavo.testing.scheduler_suite import SchedulerSuite
from octavo.testing.swapper_suite import SwapperSuite
from octavo.testing.weight_format_suite import WeightFormatSuite, reference_checkpoint


class TestFCFSScheduler(SchedulerSuite):
    registered_name = "fcfs"


class TestPriorityScheduler(SchedulerSuite):
    registered_name = "priority"
    supports_priority = True


class TestPagedKVCacheManager(KVCacheManagerSuite):
    registered_name = "paged"


class TestHostSwapper(SwapperSuite):
    registered_name = "host"


class TestDiskSwapper(SwapperSuite):
    registered_name = "disk"


class TestUnquantizedMethod(QuantizationMethodSuite):
    registered_name = "none"



class TestCpuPlatform(PlatformSuite):
    registered_name = "cpu"


class TestCudaPlatform(PlatformSuite):
    registered_name = "cuda"  # the device tests skip without a GPU

# -- the suites catch what they claim to: broken implementations fail them ------------------
class _LeakyManager(PagedKVCacheManager):
    def free(self, request):
        if request.req_id != "b":  # forgets one request's blocks
            super().free(request)


class _OverBudgetScheduler(FCFSScheduler):
    def __init__(self, kv_cache, **limits):
        super().__init__(kv_cache, **limits)
        self.max_num_batched_tokens *= 2  # schedules twice the budget it was given

    def check_request(self, request):
        pass


class _ReversingSwapper(HostSwapper):
    def copy_in(self, tier_block_ids, device_block_ids):
        super().copy_in(tier_block_ids[::-1], device_block_ids)  # loses the order


class _DroppingFormat(WeightFormat):
    name = "dropping"

    def iter_weights(self, path, config):
        tensors = torch.load(path, weights_only=True)
        tensors.pop("lm_head.weight")  # forgets a tensor
        yield from tensors.items()


class _NoScalesMethod(UnquantizedMethod):
    def apply(self, layer, x, bias=None):
        return super().apply(layer, x, bias) * 1.01


def _fails(suite_cls, impl, test_name, **kwargs):
    broken = type(f"Broken{suite_cls.__name__}", (suite_cls,),
                  {"registered_name": "x", "implementation": classmethod(lambda cls: impl)})
    with pytest.raises(AssertionError):
        getattr(broken(), test_name)(**kwargs)


def test_a_leaking_kv_cache_manager_fails_its_suite():
    _fails(KVCacheManagerSuite, _LeakyManager, "test_prefix_hit_reuses_the_blocks")


def test_a_scheduler_over_its_budget_fails_its_suite():
    _fails(SchedulerSuite, _OverBudgetScheduler, "test_token_budget_chunks_long_prompts")


def test_a_swapper_that_mixes_blocks_up_fails_its_suite(tmp_path):
    _fails(SwapperSuite, _ReversingSwapper, "test_round_trip_keeps_every_layer_bit_for_bit",
           tmp_path=tmp_path, dtype=torch.float32)


def test_a_wrong_quantized_product_fails_its_suite(request):
    _fails(QuantizationMethodSuite, _NoScalesMethod, "test_apply_equals_the_dequantized_reference",
           request=request, dtype=torch.float32, shape=(64, 96), bias=False)


def test_a_weight_format_that_drops_a_tensor_fails_its_suite(tmp_path):
    config, tensors = reference_checkpoint(tmp_path)
    torch.save(tensors, tmp_path / "model.pt")
    _fails(WeightFormatSuite, _DroppingFormat, "test_reads_every_tensor_equal_to_the_reference",
           checkpoint=(config, tensors, [tmp_path / "model.pt"]))
