"""The example plugin's engine components, quantization method, weight format and platform, each run
through Octavo's conformance suite: what a third-party plugin does to test itself."""

from __future__ import annotations

import numpy as np

from octavo.testing.kv_cache_suite import KVCacheManagerSuite
from octavo.testing.platform_suite import PlatformSuite
from octavo.testing.quantization_suite import QuantizationMethodSuite
from octavo.testing.scheduler_suite import SchedulerSuite
from octavo.testing.swapper_suite import SwapperSuite
from octavo.testing.weight_format_suite import WeightFormatSuite


class TestExampleScheduler(SchedulerSuite):
    registered_name = "example-fcfs"
    kv_cache_manager = "example-paged"


class TestExampleKVCacheManager(KVCacheManagerSuite):
    registered_name = "example-paged"


class TestExampleSwapper(SwapperSuite):
    registered_name = "example-host"


class TestExampleInt8(QuantizationMethodSuite):
    registered_name = "example_int8"
    quantization_config = {"bits": 8}

    def dequantize(self, layer):
        return layer.qweight.float() * layer.scales.float()[:, None]


class TestNpzFormat(WeightFormatSuite):
    registered_name = "*.npz"

    def write_checkpoint(self, folder, config, tensors):
        path = folder / "model.npz"
        np.savez(path, **{name: t.numpy() for name, t in tensors.items()})
        return [path]


class TestExampleCpuPlatform(PlatformSuite):
    registered_name = "example-cpu"
