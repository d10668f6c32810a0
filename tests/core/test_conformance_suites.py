"""Core's registered schedulers, KV cache managers, swappers, quantization method and
platforms, each run through its conformance suite from ``octavo.testing`` (the suites a plugin author runs)."""

from __future__ import annotations

import pytest
import torch

from octavo.engine.scheduler import FCFSScheduler
from octavo.kv_cache.manager import PagedKVCacheManager
from octavo.layers.quantization import UnquantizedMethod
from octavo.testing.kv_cache_suite import KVCacheManagerSuite
from octavo.testing.platform_suite import PlatformSuite
from octavo.testing.quantization_suite import QuantizationMethodSuite
from octavo.testing.scheduler_suite import SchedulerSuite
from octavo.testing.swapper_suite import SwapperSuite


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


def test_a_wrong_quantized_product_fails_its_suite(request):
    _fails(QuantizationMethodSuite, _NoScalesMethod, "test_apply_equals_the_dequantized_reference",
           request=request, dtype=torch.float32, shape=(64, 96), bias=False)
