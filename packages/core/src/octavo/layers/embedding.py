"""Token embedding and LM head, sharded over the vocabulary for tensor parallelism."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from octavo.layers.dense import PackedLinear, dense_linear, pack_dense
from octavo.layers.linear import copy_checked
from octavo.layers.parallel import all_gather, all_reduce
from octavo.modeling import ParallelConfig


class VocabParallelEmbedding(nn.Module):
    """``weight [vocab_per_rank, embedding_dim]``; rank ``r`` holds rows ``r*n .. (r+1)*n``.

    The vocabulary is padded up to a multiple of the tensor-parallel size; padding rows are zero.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *,
                 parallel: ParallelConfig | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", _create_weight: bool = True) -> None:
        super().__init__()
        self.parallel = parallel or ParallelConfig()
        tp = self.parallel.tensor_parallel_size
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.num_embeddings_per_rank = -(-num_embeddings // tp)
        self.vocab_start = self.parallel.rank * self.num_embeddings_per_rank
        self.vocab_end = min(self.vocab_start + self.num_embeddings_per_rank, num_embeddings)
        if _create_weight:
            self.weight = nn.Parameter(
                torch.empty(self.num_embeddings_per_rank, embedding_dim, dtype=dtype,
                            device=device), requires_grad=False)
            self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
        if loaded_weight.shape[0] != self.num_embeddings:
            raise ValueError(f"cannot load embedding: checkpoint has {loaded_weight.shape[0]} "
                             f"rows, the config's vocab_size is {self.num_embeddings}")
        rows = self.vocab_end - self.vocab_start
        with torch.no_grad():
            copy_checked(param.data[:rows], loaded_weight[self.vocab_start:self.vocab_end],
                         "embedding")
            param.data[rows:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, embedding_dim]
        if self.parallel.tensor_parallel_size == 1:
            return F.embedding(input_ids, self.weight)
        in_shard = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        local_ids = (input_ids - self.vocab_start) * in_shard
        out = F.embedding(local_ids, self.weight) * in_shard.unsqueeze(-1).to(self.weight.dtype)
        return all_reduce(out, self.parallel)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, "
                f"rows {self.vocab_start}..{self.vocab_end}")


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection ``hidden -> logits``, sharded over the vocabulary.

    Args:
        tied_to: share this embedding's weight (``tie_word_embeddings``) instead of allocating.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *,
                 parallel: ParallelConfig | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu",
                 tied_to: VocabParallelEmbedding | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim, parallel=parallel, dtype=dtype,
                         device=device, _create_weight=tied_to is None)
        if tied_to is not None:
            self.weight = tied_to.weight
        # A packed copy for the CPU product (layers/dense.py), made at the first logits and
        # remade if the weight changes; the embedding (tied or not) keeps reading the plain one.
        self._packed: tuple[tuple[int, int], PackedLinear | None] | None = None

    def _product_weight(self) -> torch.Tensor | PackedLinear:
        key = (self.weight.data_ptr(), self.weight._version)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, pack_dense(self.weight))
        packed = self._packed[1]
        return self.weight if packed is None else packed

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("ParallelLMHead is applied with compute_logits, not called")

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[n, hidden] -> [n, vocab_size]`` float32 logits."""
        logits = dense_linear(hidden, self._product_weight())  # [n, vocab_per_rank]
        if self.parallel.tensor_parallel_size > 1:
            logits = all_gather(logits, self.parallel, dim=-1)[..., :self.num_embeddings]
        return logits.float()
