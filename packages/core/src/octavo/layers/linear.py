"""Linear layers that shard over tensor-parallel ranks and delegate storage to a quant method.

Each parameter gets a ``weight_loader(param, loaded_weight[, shard_id])`` attribute that copies
this rank's slice of a checkpoint tensor into it. The merged layers (:class:`QKVParallelLinear`,
:class:`MergedColumnParallelLinear`) take HF's separate ``q/k/v`` or ``gate/up`` tensors as
shards of one weight, so the hot path runs one matmul where HF runs two or three.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from octavo.layers.parallel import all_gather, all_reduce, divide
from octavo.layers.quantization import QuantizationMethod, UnquantizedMethod, set_weight_attrs
from octavo.modeling import ParallelConfig


def output_dim_of(param: torch.Tensor) -> int | None:
    """The dim of ``param`` along the layer's output features (see ``quantization.py``)."""
    return getattr(param, "output_dim", 0)


def input_dim_of(param: torch.Tensor) -> int | None:
    """The dim of ``param`` along the layer's input features, or None."""
    return getattr(param, "input_dim", 1 if param.dim() == 2 else None)


def pack_factor_along(param: torch.Tensor, dim: int | None) -> int:
    """How many logical values one element of ``param`` holds along ``dim``."""
    if dim is not None and getattr(param, "packed_dim", None) == dim:
        return int(getattr(param, "pack_factor", 1))
    return 1


def copy_checked(dst: torch.Tensor, src: torch.Tensor, what: str = "weight") -> None:
    """``dst.copy_(src)`` (casting dtype), with a clear error when the shapes differ."""
    if dst.shape != src.shape:
        raise ValueError(f"cannot load {what}: checkpoint shape {tuple(src.shape)} does not "
                         f"match parameter shape {tuple(dst.shape)}")
    dst.copy_(src)


def narrow_checked(loaded: torch.Tensor, dim: int, start: int, size: int, full_size: int,
                   what: str = "weight") -> torch.Tensor:
    """``loaded.narrow(dim, start, size)`` after checking ``loaded`` is ``full_size`` long."""
    if loaded.dim() <= dim or loaded.shape[dim] != full_size:
        raise ValueError(f"cannot load {what}: checkpoint shape {tuple(loaded.shape)} should be "
                         f"{full_size} long along dim {dim}")
    return loaded.narrow(dim, start, size)


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    """Copy a whole checkpoint tensor into ``param``."""
    with torch.no_grad():
        copy_checked(param.data, loaded_weight)


class LinearBase(nn.Module):
    """``y = x @ W.T + b`` with ``W`` created and applied by a :class:`QuantizationMethod`.

    Args:
        input_size: this rank's input features.
        output_size: this rank's output features.
        bias: whether to create a bias (in the model dtype).
        bias_size: the bias length when it differs from ``output_size``.
        quant_method: None for a dense weight; the method's ``for_layer(prefix)`` may opt out.
        prefix: the layer's full parameter prefix, for messages and per-layer quantization.
    """

    def __init__(self, input_size: int, output_size: int, *, bias: bool,
                 parallel: ParallelConfig | None, quant_method: QuantizationMethod | None,
                 dtype: torch.dtype, device: torch.device | str, prefix: str = "",
                 bias_size: int | None = None) -> None:
        super().__init__()
        self.parallel = parallel or ParallelConfig()
        self.input_size = input_size
        self.output_size = output_size
        self.prefix = prefix
        method = quant_method.for_layer(prefix) if quant_method is not None else None
        self.quant_method: QuantizationMethod = method or UnquantizedMethod()
        self.quant_method.create_weights(self, input_size, output_size, dtype,
                                         torch.device(device))
        if bias:
            self.bias = nn.Parameter(
                torch.empty(bias_size or output_size, dtype=dtype, device=device),
                requires_grad=False)
            set_weight_attrs(self.bias, {"output_dim": 0, "input_dim": None})
        else:
            self.register_parameter("bias", None)
        for param in self.parameters(recurse=False):
            if not hasattr(param, "weight_loader"):
                param.weight_loader = self.weight_loader

    @property
    def tp_size(self) -> int:
        return self.parallel.tensor_parallel_size

    @property
    def tp_rank(self) -> int:
        return self.parallel.rank

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
        default_weight_loader(param, loaded_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., input] -> [..., output]
        return self.quant_method.apply(self, x, self.bias)

    def extra_repr(self) -> str:
        return (f"in={self.input_size}, out={self.output_size}, bias={self.bias is not None}, "
                f"quant={self.quant_method.name}")


class ReplicatedLinear(LinearBase):
    """A linear layer every rank holds whole."""

    def __init__(self, input_size: int, output_size: int, *, bias: bool = False,
                 parallel: ParallelConfig | None = None,
                 quant_method: QuantizationMethod | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 prefix: str = "") -> None:
        super().__init__(input_size, output_size, bias=bias, parallel=parallel,
                         quant_method=quant_method, dtype=dtype, device=device, prefix=prefix)


class ColumnParallelLinear(LinearBase):
    """Output features split over ranks: rank ``r`` holds rows ``r*n/tp .. (r+1)*n/tp`` of W.

    Args:
        gather_output: all-gather the shards so every rank returns all ``output_size`` features.
    """

    def __init__(self, input_size: int, output_size: int, *, bias: bool = False,
                 parallel: ParallelConfig | None = None,
                 quant_method: QuantizationMethod | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 prefix: str = "", gather_output: bool = False) -> None:
        parallel = parallel or ParallelConfig()
        self.full_output_size = output_size
        self.gather_output = gather_output
        super().__init__(input_size, divide(output_size, parallel.tensor_parallel_size),
                         bias=bias, parallel=parallel, quant_method=quant_method, dtype=dtype,
                         device=device, prefix=prefix)

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
        dim = output_dim_of(param)
        if dim is not None and self.tp_size > 1:
            size = param.shape[dim]
            loaded_weight = narrow_checked(loaded_weight, dim, self.tp_rank * size, size,
                                           size * self.tp_size, self.prefix)
        default_weight_loader(param, loaded_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.quant_method.apply(self, x, self.bias)  # [..., output_size / tp]
        return all_gather(out, self.parallel) if self.gather_output else out


class _ShardedColumnLinear(ColumnParallelLinear):
    """A column-parallel weight made of named shards; subclasses say where each shard goes."""

    def _shard_layout(self, shard_id) -> tuple[int, int, int, int]:
        """(offset in this rank's output, size on this rank, start in the checkpoint tensor,
        the checkpoint tensor's full size), in logical (unpacked) output features."""
        raise NotImplementedError

    def _shard_ids(self) -> Sequence:
        raise NotImplementedError

    def _logical_sizes(self) -> Sequence[int]:
        raise NotImplementedError

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor,
                      shard_id=None) -> None:
        dim = output_dim_of(param)
        if shard_id is None:  # the checkpoint stores the merged tensor: split it into shards
            if dim is None:
                default_weight_loader(param, loaded_weight)
                return
            pack = pack_factor_along(param, dim)
            sizes = [size // pack for size in self._logical_sizes()]
            fused = narrow_checked(loaded_weight, dim, 0, sum(sizes), sum(sizes),
                                   f"{self.prefix or type(self).__name__} (fused)")
            for sid, part in zip(self._shard_ids(), fused.split(sizes, dim=dim)):
                self.weight_loader(param, part, sid)
            return
        if dim is None:  # e.g. a per-tensor scale, shared by the shards
            default_weight_loader(param, loaded_weight)
            return
        offset, size, start, full = self._shard_layout(shard_id)
        pack = pack_factor_along(param, dim)
        what = f"{self.prefix or type(self).__name__} shard {shard_id!r}"
        part = narrow_checked(loaded_weight, dim, start // pack, size // pack, full // pack, what)
        with torch.no_grad():
            copy_checked(param.data.narrow(dim, offset // pack, size // pack), part, what)


class MergedColumnParallelLinear(_ShardedColumnLinear):
    """Several column-parallel linears of the same input fused into one (``gate_up_proj``).

    Shard ``i`` of ``output_sizes`` is loaded with ``weight_loader(param, w, i)``; each rank holds
    its slice of every shard, shards in order.
    """

    def __init__(self, input_size: int, output_sizes: Sequence[int], *, bias: bool = False,
                 parallel: ParallelConfig | None = None,
                 quant_method: QuantizationMethod | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 prefix: str = "", gather_output: bool = False) -> None:
        self.output_sizes = list(output_sizes)
        tp = (parallel or ParallelConfig()).tensor_parallel_size
        for size in self.output_sizes:
            divide(size, tp)
        super().__init__(input_size, sum(self.output_sizes), bias=bias, parallel=parallel,
                         quant_method=quant_method, dtype=dtype, device=device, prefix=prefix,
                         gather_output=gather_output)

    def _shard_ids(self):
        return range(len(self.output_sizes))

    def _logical_sizes(self):
        return self.output_sizes

    def _shard_layout(self, shard_id):
        tp = self.tp_size
        if not 0 <= shard_id < len(self.output_sizes):
            raise ValueError(f"{self.prefix}: shard id {shard_id!r} out of range")
        offset = sum(self.output_sizes[:shard_id]) // tp
        size = self.output_sizes[shard_id] // tp
        return offset, size, self.tp_rank * size, self.output_sizes[shard_id]


class QKVParallelLinear(_ShardedColumnLinear):
    """The fused query/key/value projection: output ``[q | k | v]`` for this rank's heads.

    Loaded from HF's ``q_proj``/``k_proj``/``v_proj`` with shard ids ``"q"``, ``"k"``, ``"v"``.
    When there are fewer KV heads than ranks, each KV head is replicated on several ranks.
    """

    def __init__(self, hidden_size: int, head_size: int, num_heads: int,
                 num_kv_heads: int | None = None, *, bias: bool = False,
                 parallel: ParallelConfig | None = None,
                 quant_method: QuantizationMethod | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 prefix: str = "") -> None:
        parallel = parallel or ParallelConfig()
        tp = parallel.tensor_parallel_size
        num_kv_heads = num_kv_heads or num_heads
        self.head_size = head_size
        self.total_num_heads = num_heads
        self.total_num_kv_heads = num_kv_heads
        self.num_heads = divide(num_heads, tp)
        if num_kv_heads >= tp:
            self.num_kv_heads = divide(num_kv_heads, tp)
            self.kv_replicas = 1
        else:
            self.num_kv_heads = 1
            self.kv_replicas = divide(tp, num_kv_heads)
        self.q_size = self.num_heads * head_size  # per rank
        self.kv_size = self.num_kv_heads * head_size
        full_out = (self.num_heads + 2 * self.num_kv_heads) * head_size * tp
        super().__init__(hidden_size, full_out, bias=bias, parallel=parallel,
                         quant_method=quant_method, dtype=dtype, device=device, prefix=prefix)

    def _shard_ids(self):
        return ("q", "k", "v")

    def _logical_sizes(self):
        kv = self.total_num_kv_heads * self.head_size
        return (self.total_num_heads * self.head_size, kv, kv)

    def _shard_layout(self, shard_id):
        if shard_id == "q":
            return 0, self.q_size, self.tp_rank * self.q_size, self.total_num_heads * self.head_size
        kv_start = (self.tp_rank // self.kv_replicas) * self.kv_size
        kv_full = self.total_num_kv_heads * self.head_size
        if shard_id == "k":
            return self.q_size, self.kv_size, kv_start, kv_full
        if shard_id == "v":
            return self.q_size + self.kv_size, self.kv_size, kv_start, kv_full
        raise ValueError(f"{self.prefix}: unknown qkv shard id {shard_id!r}")


class RowParallelLinear(LinearBase):
    """Input features split over ranks; the partial products are summed over ranks.

    Args:
        reduce_results: all-reduce the partial outputs (turn off to fuse the reduction later).
    """

    def __init__(self, input_size: int, output_size: int, *, bias: bool = False,
                 parallel: ParallelConfig | None = None,
                 quant_method: QuantizationMethod | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 prefix: str = "", reduce_results: bool = True) -> None:
        parallel = parallel or ParallelConfig()
        self.full_input_size = input_size
        self.reduce_results = reduce_results
        super().__init__(divide(input_size, parallel.tensor_parallel_size), output_size,
                         bias=bias, parallel=parallel, quant_method=quant_method, dtype=dtype,
                         device=device, prefix=prefix)
        if self.bias is not None:
            self.bias.output_dim = None  # every rank holds the whole bias

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
        dim = input_dim_of(param)
        if dim is not None and self.tp_size > 1:
            size = param.shape[dim]
            loaded_weight = narrow_checked(loaded_weight, dim, self.tp_rank * size, size,
                                           size * self.tp_size, self.prefix)
        default_weight_loader(param, loaded_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., input_size / tp]
        if self.tp_size == 1:
            return self.quant_method.apply(self, x, self.bias)
        out = self.quant_method.apply(self, x)
        if self.reduce_results:
            out = all_reduce(out, self.parallel)
        if self.bias is not None and (self.reduce_results or self.tp_rank == 0):
            out = out + self.bias  # counted once in the sum over ranks
        return out
