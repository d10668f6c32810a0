"""Conformance suite for quantization methods; a quantization plugin subclasses it.

Each test builds a real linear layer (``octavo.layers.ReplicatedLinear``) with the registered
:class:`~octavo.layers.quantization.QuantizationMethod`, fills the parameters its
``create_weights`` made with a random checkpoint (:meth:`QuantizationMethodSuite.fill_random`),
takes the method's own dequantized weight as the reference
(:meth:`QuantizationMethodSuite.dequantize`, before ``process_weights_after_loading`` may
repack it), runs ``process_weights_after_loading`` as the loader does, and checks that
``apply`` on fresh random inputs equals ``x @ W.T + b`` with that weight, for every dtype,
shape, batch size and with or without a bias. Usage::

    from octavo.testing.quantization_suite import QuantizationMethodSuite

    class TestMyInt4(QuantizationMethodSuite):
        registered_name = "my_int4"                  # the quant_method it registers
        quantization_config = {"bits": 4, "group_size": 32}

        def dequantize(self, layer):                 # if the method has no dequantize()
            return my_dequantize(layer.qweight, layer.scales)
"""

from __future__ import annotations

import zlib
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from octavo.layers.quantization import QuantizationMethod
from octavo.testing.suite import ConformanceSuite

__all__ = ["DEFAULT_TOLERANCES", "QuantizationMethodSuite"]

# (atol, rtol) of apply() against the dequantized reference, relative to the output's scale
DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (3e-3, 3e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


class QuantizationMethodSuite(ConformanceSuite):
    """Conformance tests for a quantization method, built as the loader builds it:
    ``cls.from_config(quantization_config)``.

    Attributes:
        registered_name: the method's registered ``quant_method`` (required).
        quantization_config: the checkpoint's ``quantization_config`` to build it from.
        device: where the layer lives.
        dtypes: model dtypes to test.
        shapes: ``(in_features, out_features)`` of the layers to test.
        token_counts: batch sizes (rows of ``x``) of every test.
        prefix: the layer's name, as ``for_layer`` sees it.
    """

    registry_hook = "register_quantization_methods"
    quantization_config: ClassVar[dict[str, Any]] = {}
    device: ClassVar[str] = "cpu"
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.bfloat16)
    shapes: ClassVar[tuple[tuple[int, int], ...]] = ((64, 96), (128, 32))
    token_counts: ClassVar[tuple[int, ...]] = (1, 7, 33)
    prefix: ClassVar[str] = "model.layers.0.mlp.down_proj"
    tolerances: ClassVar[dict[torch.dtype, tuple[float, float]]] = DEFAULT_TOLERANCES

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "dtype" in metafunc.fixturenames:
            metafunc.parametrize("dtype", list(self.dtypes),
                                 ids=[str(d).removeprefix("torch.") for d in self.dtypes])
        if "shape" in metafunc.fixturenames:
            metafunc.parametrize("shape", list(self.shapes),
                                 ids=[f"{i}x{o}" for i, o in self.shapes])

    # -- hooks for subclasses -------------------------------------------------------------------
    def make_method(self) -> QuantizationMethod:
        return self.implementation().from_config(dict(self.quantization_config))

    def make_layer(self, in_features: int, out_features: int, dtype: torch.dtype,
                   bias: bool) -> nn.Module:
        """A ``ReplicatedLinear`` whose parameters the method created (not filled yet)."""
        from octavo.layers.linear import ReplicatedLinear

        return ReplicatedLinear(in_features, out_features, bias=bias,
                                quant_method=self.make_method(), dtype=dtype,
                                device=self.device, prefix=self.prefix)

    def fill_random(self, layer: nn.Module, generator: torch.Generator) -> None:
        """Fill the layer's parameters with a random valid checkpoint.

        The default: floating-point tensors get ``0.1 * randn``, integer tensors random values
        over their whole range; parameters marked ``optional`` keep what ``create_weights``
        put there. Override when some values are invalid (group indices, say).
        """
        for param in layer.parameters(recurse=False):
            if getattr(param, "optional", False):
                continue
            if param.dtype.is_floating_point:
                values = 0.1 * torch.randn(param.shape, generator=generator)
            else:
                info = torch.iinfo(param.dtype)
                values = torch.randint(info.min, info.max, param.shape, generator=generator,
                                       dtype=torch.int64)
            param.data.copy_(values.to(param.dtype))

    def dequantize(self, layer: nn.Module) -> torch.Tensor:
        """The float weight ``[out_features, in_features]`` the layer's parameters stand for,
        read before ``process_weights_after_loading``: the method's own ``dequantize(layer)``
        when it has one, else the layer's dense ``weight``. Override for other methods."""
        method = layer.quant_method
        if hasattr(method, "dequantize"):
            return method.dequantize(layer)
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
            raise NotImplementedError(
                f"{type(self).__name__} must override dequantize(layer): "
                f"{type(method).__name__} has no dequantize() and no float weight")
        return weight.detach().clone()

    # -- helpers -----------------------------------------------------------------------------
    def generator(self, request: pytest.FixtureRequest) -> torch.Generator:
        return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))

    def loaded_layer(self, request: pytest.FixtureRequest, shape: tuple[int, int],
                     dtype: torch.dtype, bias: bool) -> tuple[nn.Module, torch.Tensor]:
        """A layer with a random checkpoint loaded and processed, and its reference weight."""
        from octavo.layers.weight_loading import process_weights_after_loading

        gen = self.generator(request)
        layer = self.make_layer(*shape, dtype, bias)
        self.fill_random(layer, gen)
        reference = self.dequantize(layer).float().cpu()
        assert reference.shape == (shape[1], shape[0]), (
            f"dequantize() gave {tuple(reference.shape)}, not [out_features, in_features]")
        process_weights_after_loading(layer)
        return layer, reference

    def check_apply(self, request: pytest.FixtureRequest, layer: nn.Module,
                    reference: torch.Tensor, dtype: torch.dtype) -> None:
        gen = self.generator(request)
        bias = None if layer.bias is None else layer.bias.detach().float().cpu()
        atol, rtol = self.tolerances[dtype]
        for n in self.token_counts:
            x = torch.randn(n, reference.shape[1], generator=gen).to(dtype).to(self.device)
            x_before = x.clone()
            with torch.inference_mode():
                out = layer.quant_method.apply(layer, x, layer.bias)
            assert out.shape == (n, reference.shape[0]), f"apply() gave {tuple(out.shape)}"
            assert out.dtype == dtype, f"apply() returned {out.dtype} for {dtype} input"
            torch.testing.assert_close(x, x_before, atol=0, rtol=0,
                                       msg="apply() modified its input")
            expected = F.linear(x.float().cpu(), reference, bias)
            scale = float(expected.abs().amax().clamp(min=1.0))
            torch.testing.assert_close(out.float().cpu(), expected, atol=atol * scale, rtol=rtol,
                                       msg=lambda m, n=n: f"{n} rows: apply() differs from "
                                                          f"the dequantized reference: {m}")

    # -- tests --------------------------------------------------------------------------------
    def test_from_config_builds_a_method(self) -> None:
        method = self.make_method()
        assert isinstance(method, QuantizationMethod)
        assert isinstance(method.name, str) and method.name
        chosen = method.for_layer(self.prefix)
        assert chosen is None or isinstance(chosen, QuantizationMethod)

    def test_create_weights_on_the_layer_device(self, dtype) -> None:
        shape = self.shapes[0]
        layer = self.make_layer(*shape, dtype, bias=False)
        params = list(layer.parameters(recurse=False))
        assert params, "create_weights attached no parameter"
        for param in params:
            assert param.device.type == torch.device(self.device).type
            assert not param.requires_grad

    @pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
    def test_apply_equals_the_dequantized_reference(self, request, dtype, shape, bias) -> None:
        layer, reference = self.loaded_layer(request, shape, dtype, bias)
        self.check_apply(request, layer, reference, dtype)

    def test_processing_twice_keeps_the_result(self, request, dtype) -> None:
        """The loader may call ``process_weights_after_loading`` again (a reload)."""
        from octavo.layers.weight_loading import process_weights_after_loading

        layer, reference = self.loaded_layer(request, self.shapes[0], dtype, bias=True)
        process_weights_after_loading(layer)
        self.check_apply(request, layer, reference, dtype)
