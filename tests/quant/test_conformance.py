"""GPTQ and AWQ through the quantization-method conformance suite: ``apply()`` on fresh random
inputs equals ``x @ W.T + b`` with the method's own dequantized weight."""

from __future__ import annotations

import torch

from octavo.testing.quantization_suite import DEFAULT_TOLERANCES, QuantizationMethodSuite

# 4-bit layers run on torch's CPU int4 kernel, which computes in bfloat16 whatever the dtype
# (octavo_quant.kernels): bfloat16's tolerance for every dtype.
INT4_CPU = {dtype: DEFAULT_TOLERANCES[torch.bfloat16] for dtype in DEFAULT_TOLERANCES}


class TestGPTQ(QuantizationMethodSuite):
    registered_name = "gptq"
    quantization_config = {"bits": 4, "group_size": 32, "desc_act": False, "sym": True}
    tolerances = INT4_CPU


class TestGPTQv2Bits8(QuantizationMethodSuite):
    registered_name = "gptq"
    quantization_config = {"bits": 8, "group_size": 64, "desc_act": False, "sym": False,
                           "checkpoint_format": "gptq_v2"}
    dtypes = (torch.float32,)


class TestGPTQActOrder(QuantizationMethodSuite):
    registered_name = "gptq"
    quantization_config = {"bits": 4, "group_size": 32, "desc_act": True, "sym": True}
    dtypes = (torch.float32,)
    tolerances = INT4_CPU

    def fill_random(self, layer, generator):
        super().fill_random(layer, generator)
        perm = torch.randperm(layer.g_idx.numel(), generator=generator)
        layer.g_idx.data.copy_((perm // 32).to(torch.int32))  # GPTQ's groups in act order


class TestAWQ(QuantizationMethodSuite):
    registered_name = "awq"
    quantization_config = {"bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}
    tolerances = INT4_CPU
