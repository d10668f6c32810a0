"""Conformance suite for attention backends; third-party backends subclass it.

Every test builds a fresh random packed batch over a paged KV cache with a shuffled,
non-contiguous block table, runs the backend, and compares its output with a float64
reference computed here from the batch's inputs (:func:`reference_attention`, independent of
every backend, the torch one included) and the KV cache it wrote with the expected cache
(:func:`reference_cache`). Usage::

    from octavo.testing.attention_suite import AttentionBackendSuite

    class TestMyBackend(AttentionBackendSuite):
        backend_cls = MyBackend
        device = "cuda"
        dtypes = (torch.float16, torch.bfloat16)

Subclasses can shrink or grow the shapes with the class attributes below (``block_sizes``,
``head_sizes``, ``head_configs``, ``max_context``, ...). Poison is everywhere a backend must
not look: cache contents that no request owns are filled with ``stale_value`` (NaN by
default), as a freshly allocated cache may hold anything, and every buffer the backend
allocates during ``forward`` (``torch.empty`` and friends; on CUDA also the caching
allocator's free memory) starts as NaN, so an output row the backend forgets to write fails.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from octavo.attention.base import AttentionBackend, AttentionMetadata
from octavo.layers.alibi import alibi_slopes

__all__ = ["DEFAULT_TOLERANCES", "AttentionBackendSuite", "PagedBatch", "alibi_slopes",
           "make_paged_batch", "poisoned_allocations", "reference_attention", "reference_cache"]

# (atol, rtol) of a backend's output (in the input dtype) against the float64 reference.
DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (3e-3, 3e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


@dataclass
class PagedBatch:
    """One packed batch over a paged cache, with the cache state before the step."""

    query: torch.Tensor  # [num_rows, num_heads, head_size] (num_rows >= num_tokens)
    key: torch.Tensor  # [num_rows, num_kv_heads, head_size]
    value: torch.Tensor  # [num_rows, num_kv_heads, head_size]
    key_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_size]
    value_cache: torch.Tensor
    metadata: AttentionMetadata

    @property
    def num_tokens(self) -> int:
        return self.metadata.num_tokens


def make_paged_batch(
    query_lens: list[int],
    seq_lens: list[int],
    *,
    num_heads: int,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    spare_blocks: int = 3,
    stale_value: float = float("nan"),
    pad_tokens: int = 0,
    fused_qkv: bool = False,
) -> PagedBatch:
    """Random queries, new K/V and a paged cache holding each request's earlier context.

    Request ``i`` has ``seq_lens[i] - query_lens[i]`` positions already cached (random values)
    and ``query_lens[i]`` new tokens. Blocks are drawn in random order from a pool with
    ``spare_blocks`` unused ones, and block 0 is never used, so the zero padding of the block
    table points at stale data. ``pad_tokens`` extra rows with slot ``-1`` follow the real
    tokens, as padding for a captured graph would. ``fused_qkv`` makes query/key/value strided
    views of one ``[num_rows, (H + 2 * KH) * D]`` tensor, as a fused QKV projection returns.
    """
    if len(query_lens) != len(seq_lens):
        raise ValueError("query_lens and seq_lens differ in length")
    if any(q < 0 or q > s for q, s in zip(query_lens, seq_lens)):
        raise ValueError("each query length must be within 0..seq_len")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = 1 + sum(blocks_per_seq) + spare_blocks
    max_blocks = max(blocks_per_seq, default=0) + 1
    pool = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    block_tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    for i, n in enumerate(blocks_per_seq):
        block_tables[i, :n] = torch.tensor(pool[:n], dtype=torch.int32)
        pool = pool[n:]

    def slot(seq: int, pos: int) -> int:
        return int(block_tables[seq, pos // block_size]) * block_size + pos % block_size

    cache_shape = (num_blocks, block_size, num_kv_heads, head_size)
    key_cache = torch.full(cache_shape, stale_value, dtype=dtype)
    value_cache = torch.full(cache_shape, stale_value, dtype=dtype)
    flat_k = key_cache.view(-1, num_kv_heads, head_size)
    flat_v = value_cache.view(-1, num_kv_heads, head_size)
    new_slots: list[int] = []
    for i, (q_len, s_len) in enumerate(zip(query_lens, seq_lens)):
        cached = [slot(i, pos) for pos in range(s_len - q_len)]
        if cached:
            idx = torch.tensor(cached)
            flat_k[idx] = _randn((len(cached), num_kv_heads, head_size), gen, dtype)
            flat_v[idx] = _randn((len(cached), num_kv_heads, head_size), gen, dtype)
        new_slots += [slot(i, pos) for pos in range(s_len - q_len, s_len)]

    num_tokens = sum(query_lens)
    num_rows = num_tokens + pad_tokens
    slot_mapping = torch.tensor(new_slots + [-1] * pad_tokens, dtype=torch.int64)
    q_width, kv_width = num_heads * head_size, num_kv_heads * head_size
    qkv = _randn((num_rows, q_width + 2 * kv_width), gen, dtype)
    if not fused_qkv:
        qkv = qkv.clone()
    query, key, value = qkv.split([q_width, kv_width, kv_width], dim=-1)
    query = query.view(num_rows, num_heads, head_size)
    key = key.view(num_rows, num_kv_heads, head_size)
    value = value.view(num_rows, num_kv_heads, head_size)
    if not fused_qkv:
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()

    starts = [0]
    for q_len in query_lens:
        starts.append(starts[-1] + q_len)
    metadata = AttentionMetadata(
        slot_mapping=slot_mapping.to(device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens, default=0),
        query_start_loc_cpu=starts,
        seq_lens_cpu=list(seq_lens),
    )
    to = {"device": device}
    return PagedBatch(query.to(**to), key.to(**to), value.to(**to),
                      key_cache.to(**to), value_cache.to(**to), metadata)


def _randn(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)


def reference_attention(
    batch: PagedBatch,
    scale: float,
    *,
    alibi_slopes: torch.Tensor | None = None,  # [num_heads]
    sliding_window: int | None = None,
    logits_soft_cap: float | None = None,
) -> torch.Tensor:  # [num_tokens, num_heads, head_size] float64, on the CPU
    """Causal attention of ``batch`` in float64, computed request by request on the CPU.

    Request ``i`` attends over its cached context, read from the cache as it was before the
    step through its block table, followed by its own new K/V rows (not read back from any
    cache a backend wrote).
    """
    md = batch.metadata
    num_heads, head_size = batch.query.shape[1:]
    num_kv_heads, block_size = batch.key_cache.shape[2], batch.key_cache.shape[1]
    group = num_heads // num_kv_heads
    flat_k = batch.key_cache.cpu().double().view(-1, num_kv_heads, head_size)
    flat_v = batch.value_cache.cpu().double().view(-1, num_kv_heads, head_size)
    query, key, value = (t.cpu().double() for t in (batch.query, batch.key, batch.value))
    tables = md.block_tables.cpu().long()
    slopes = None if alibi_slopes is None else alibi_slopes.cpu().double()
    out = torch.empty(md.num_tokens, num_heads, head_size, dtype=torch.float64)
    starts = md.query_start_loc_cpu
    for i, seq_len in enumerate(md.seq_lens_cpu):
        lo, hi = starts[i], starts[i + 1]
        if lo == hi:
            continue
        cached = torch.arange(seq_len - (hi - lo))
        slots = tables[i, cached // block_size] * block_size + cached % block_size
        k = torch.cat([flat_k[slots], key[lo:hi]]).repeat_interleave(group, dim=1)  # [s, H, D]
        v = torch.cat([flat_v[slots], value[lo:hi]]).repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", query[lo:hi], k) * scale  # [H, q, s]
        if logits_soft_cap is not None:
            scores = logits_soft_cap * torch.tanh(scores / logits_soft_cap)
        q_pos = torch.arange(seq_len - (hi - lo), seq_len).view(1, -1, 1)
        k_pos = torch.arange(seq_len).view(1, 1, -1)
        if slopes is not None:
            scores = scores + slopes.view(-1, 1, 1) * (k_pos - q_pos)
        hidden = k_pos > q_pos
        if sliding_window is not None:
            hidden = hidden | (k_pos <= q_pos - sliding_window)
        probs = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1)
        out[lo:hi] = torch.einsum("hqk,khd->qhd", probs, v)
    return out


def reference_cache(batch: PagedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The K/V caches (on the CPU) after the step: new rows at their slots, padding skipped."""
    slots = batch.metadata.slot_mapping.cpu()[: batch.key.shape[0]]
    real = slots >= 0
    caches = []
    for cache, new in ((batch.key_cache, batch.key), (batch.value_cache, batch.value)):
        expected = cache.cpu().clone()
        expected.view(-1, *cache.shape[2:])[slots[real]] = new.cpu()[real]
        caches.append(expected)
    return caches[0], caches[1]


@contextlib.contextmanager
def poisoned_allocations(device: torch.device | str,
                         value: float = float("nan")) -> Iterator[None]:
    """While active, floating-point tensors from ``torch.empty``, ``torch.empty_like``,
    ``torch.empty_strided`` and ``Tensor.new_empty`` start filled with ``value``.

    On CUDA the caching allocator's free memory is poisoned too, so buffers that compiled
    extensions allocate in C++ start as ``value`` as well (a best effort: the allocator reuses
    the freed block for requests of up to its size).
    """
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        poison = torch.full((min(free // 8, 64 << 20),), value, dtype=torch.float32,
                            device=device)
        del poison

    def poisoning(allocate):
        def allocate_poisoned(*args, **kwargs):
            tensor = allocate(*args, **kwargs)
            if tensor.is_floating_point():
                tensor.fill_(value)
            return tensor
        return allocate_poisoned

    patched = [(torch, "empty"), (torch, "empty_like"), (torch, "empty_strided"),
               (torch.Tensor, "new_empty")]
    originals = [getattr(owner, name) for owner, name in patched]
    try:
        for (owner, name), original in zip(patched, originals):
            setattr(owner, name, poisoning(original))
        yield
    finally:
        for (owner, name), original in zip(patched, originals):
            setattr(owner, name, original)


class AttentionBackendSuite:
    """Conformance tests for an :class:`~octavo.attention.base.AttentionBackend` subclass.

    Set ``backend_cls`` (required) and override any knob. Dtypes and head sizes the backend
    refuses on ``device`` (its ``unsupported_reason``) are skipped with that reason. ALiBi, sliding-window and soft-cap tests
    run when the backend class does not set ``supports_alibi`` / ``supports_sliding_window`` /
    ``supports_logits_soft_cap`` to False.
    """

    backend_cls: ClassVar[type[AttentionBackend]]
    device: ClassVar[str] = "cpu"
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.float16, torch.bfloat16)
    block_sizes: ClassVar[tuple[int, ...]] = (8, 16, 32)
    head_sizes: ClassVar[tuple[int, ...]] = (64, 80, 96, 128, 256)
    # (num_heads, num_kv_heads): multi-head, grouped-query, multi-query
    head_configs: ClassVar[tuple[tuple[int, int], ...]] = ((4, 4), (4, 2), (4, 1))
    gqa_config: ClassVar[tuple[int, int]] = (4, 2)  # used where heads are not the subject
    max_context: ClassVar[int] = 96  # longest sequence in most tests
    long_context: ClassVar[int] = 300  # the long decode in test_decode_batch
    num_decodes: ClassVar[int] = 4
    sliding_windows: ClassVar[tuple[int, ...]] = (5, 20)
    stale_value: ClassVar[float] = float("nan")
    tolerances: ClassVar[dict[torch.dtype, tuple[float, float]]] = DEFAULT_TOLERANCES

    # -- parametrization ------------------------------------------------------------------
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        axes = {
            "dtype": (self.dtypes, lambda d: str(d).removeprefix("torch.")),
            "block_size": (self.block_sizes, lambda b: f"bs{b}"),
            "head_size": (self.head_sizes, lambda h: f"d{h}"),
            "head_config": (self.head_configs, lambda c: f"h{c[0]}kv{c[1]}"),
            "sliding_window": (self.sliding_windows, lambda w: f"win{w}"),
        }
        for name, (values, ids) in axes.items():
            if name in metafunc.fixturenames:
                metafunc.parametrize(name, list(values), ids=[ids(v) for v in values])

    # -- hooks for subclasses ---------------------------------------------------------------
    def make_backend(self, num_heads: int, head_size: int, num_kv_heads: int,
                     **kwargs: Any) -> AttentionBackend:
        """Build the backend under test (override to pass extra constructor arguments)."""
        return self.backend_cls(num_heads, head_size, num_kv_heads, head_size ** -0.5, **kwargs)

    def tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        return self.tolerances[dtype]

    # -- the check every test makes -----------------------------------------------------------
    def check(
        self,
        request: pytest.FixtureRequest,
        query_lens: list[int],
        seq_lens: list[int],
        *,
        dtype: torch.dtype,
        head_config: tuple[int, int] | None = None,
        head_size: int | None = None,
        block_size: int | None = None,
        pad_tokens: int = 0,
        fused_qkv: bool = False,
        **backend_kwargs: Any,
    ) -> None:
        """Run the backend and the torch reference on one batch; compare output and cache."""
        num_heads, num_kv_heads = head_config or self.gqa_config
        head_size = head_size or self.head_sizes[0]
        block_size = block_size or self.block_sizes[0]
        reason = self.backend_cls.unsupported_reason(self.device, dtype, head_size)
        if reason is not None:
            pytest.skip(f"{self.backend_cls.__name__} does not support "
                        f"{self.device}/{dtype}/head_size={head_size}: {reason}")
        batch = make_paged_batch(
            query_lens, seq_lens, num_heads=num_heads, num_kv_heads=num_kv_heads,
            head_size=head_size, block_size=block_size, dtype=dtype, device=self.device,
            generator=self.generator(request), stale_value=self.stale_value,
            pad_tokens=pad_tokens, fused_qkv=fused_qkv)
        slopes = backend_kwargs.pop("alibi_slopes", None)
        if slopes is not None:
            slopes = slopes.to(self.device)
        kwargs = dict(backend_kwargs, alibi_slopes=slopes)
        expected = reference_attention(batch, head_size ** -0.5, **kwargs)
        expected_k, expected_v = reference_cache(batch)

        key_cache, value_cache = batch.key_cache.clone(), batch.value_cache.clone()
        backend = self.make_backend(num_heads, head_size, num_kv_heads, **kwargs)
        with poisoned_allocations(self.device):
            out = backend.forward(batch.query, batch.key, batch.value, key_cache, value_cache,
                                  batch.metadata)

        n = batch.num_tokens
        assert out.shape[1:] == batch.query.shape[1:] and out.shape[0] >= n
        assert out.dtype == dtype and out.device.type == torch.device(self.device).type
        torch.testing.assert_close(key_cache.cpu(), expected_k, atol=0, rtol=0, equal_nan=True,
                                   msg=lambda m: f"key cache differs from the expected: {m}")
        torch.testing.assert_close(value_cache.cpu(), expected_v, atol=0, rtol=0,
                                   equal_nan=True,
                                   msg=lambda m: f"value cache differs from the expected: {m}")
        atol, rtol = self.tolerance(dtype)
        torch.testing.assert_close(out[:n].cpu().double(), expected, atol=atol, rtol=rtol,
                                   msg=lambda m: f"output differs from the reference: {m}")

    @staticmethod
    def generator(request: pytest.FixtureRequest) -> torch.Generator:
        """Fresh inputs per test, reproducible from the test id."""
        return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))

    def _skip_unless(self, feature: str) -> None:
        if not getattr(self.backend_cls, f"supports_{feature}"):
            pytest.skip(f"{self.backend_cls.__name__} declares no {feature} support")

    def _lengths(self, request: pytest.FixtureRequest, n: int, lo: int, hi: int) -> list[int]:
        gen = torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()) + 1)
        return torch.randint(lo, hi + 1, (n,), generator=gen).tolist()

    # -- tests ------------------------------------------------------------------------------------
    def test_mixed_batch(self, request, dtype, block_size, head_size):
        """Decodes, prefill chunks on top of cached context and whole prompts, packed."""
        top = self.max_context
        ctx = self._lengths(request, 2, block_size + 1, top - top // 3)
        query_lens = [1, top // 3, 1, top // 4, 1, top // 5]
        seq_lens = [ctx[0], ctx[1] + top // 3, block_size, top // 4, 1, 2 * block_size + top // 5]
        self.check(request, query_lens, seq_lens, dtype=dtype, block_size=block_size,
                   head_size=head_size)

    def test_head_configs(self, request, dtype, head_config):
        """Multi-head, grouped-query and multi-query attention."""
        top = self.max_context
        query_lens = [1, top // 2, 1]
        seq_lens = [top - 3, top, 2 * self.block_sizes[0] + 1]
        self.check(request, query_lens, seq_lens, dtype=dtype, head_config=head_config)

    def test_decode_batch(self, request, dtype, block_size):
        """Decode-only batch: one long context, block-boundary and one-token contexts."""
        lens = self._lengths(request, self.num_decodes, 2, self.max_context)
        seq_lens = [self.long_context, block_size, block_size + 1, 1] + lens
        self.check(request, [1] * len(seq_lens), seq_lens, dtype=dtype, block_size=block_size)

    def test_prefill_batch(self, request, dtype):
        """Whole prompts only, one of them longer than any query tile of ``max_context``."""
        lens = self._lengths(request, 2, 2, self.max_context // 2)
        seq_lens = [self.max_context, 1] + lens
        self.check(request, seq_lens, seq_lens, dtype=dtype)

    def test_prefill_chunks(self, request, dtype, block_size):
        """Chunks of long prompts that start mid-block and on a block boundary."""
        chunk = self.max_context // 3
        query_lens = [chunk, chunk, 1]
        seq_lens = [block_size + 3 + chunk, 2 * block_size + chunk, 5]
        self.check(request, query_lens, seq_lens, dtype=dtype, block_size=block_size)

    def test_sliding_window(self, request, dtype, sliding_window):
        self._skip_unless("sliding_window")
        top = self.max_context
        query_lens = [1, top // 3, top // 2, 1]
        seq_lens = [top, top // 3 + 7, top // 2, 3]
        self.check(request, query_lens, seq_lens, dtype=dtype, sliding_window=sliding_window)

    def test_alibi(self, request, dtype):
        self._skip_unless("alibi")
        top = self.max_context
        num_heads = self.gqa_config[0]
        self.check(request, [1, top // 3, top // 2], [top, top // 3 + 9, top // 2], dtype=dtype,
                   alibi_slopes=alibi_slopes(num_heads))

    def test_logits_soft_cap(self, request, dtype):
        self._skip_unless("logits_soft_cap")
        top = self.max_context
        self.check(request, [1, top // 3], [top, top // 2], dtype=dtype, logits_soft_cap=3.0)

    def test_fused_qkv_views(self, request, dtype):
        """Query/key/value as strided views of one fused QKV projection output."""
        top = self.max_context
        self.check(request, [1, top // 3, 1], [top // 2, top // 3 + 5, 9], dtype=dtype,
                   fused_qkv=True)

    def test_padding_and_empty_requests(self, request, dtype):
        """Rows past ``num_tokens`` with slot -1 are not written; a request may have no query."""
        top = self.max_context
        self.check(request, [1, 0, top // 4, 1], [top // 2, 7, top // 4, 4], dtype=dtype,
                   pad_tokens=3)
