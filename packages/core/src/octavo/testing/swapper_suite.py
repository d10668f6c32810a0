"""Conformance suite for swappers (the storage of a second tier of KV blocks).

The tests build the registered :class:`~octavo.kv_cache.swapper.Swapper` over a random paged
cache (several layers, keys and values) and check that whole blocks survive a round trip —
``copy_out`` to tier blocks, the device blocks overwritten, ``copy_in`` into other device
blocks — bit for bit, in every layer, in the order given; that the blocks not named are left
alone; that ``copy_device`` runs copy-on-write copies; and that ``measure_bandwidth`` returns
a positive rate. Usage::

    from octavo.testing.swapper_suite import SwapperSuite

    class TestMySwapper(SwapperSuite):
        registered_name = "my-tier"
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch

from octavo.kv_cache.swapper import Swapper
from octavo.modeling import KVCaches
from octavo.testing.suite import ConformanceSuite

__all__ = ["SwapperSuite", "random_kv_caches"]


def random_kv_caches(num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                     head_size: int, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu", seed: int = 0) -> KVCaches:
    """Per layer ``(key_cache, value_cache)``, each ``[num_blocks, block_size, num_kv_heads,
    head_size]`` of random values."""
    gen = torch.Generator().manual_seed(seed)
    shape = (num_blocks, block_size, num_kv_heads, head_size)
    return [tuple(torch.randn(shape, generator=gen).to(dtype).to(device) for _ in range(2))
            for _ in range(num_layers)]


class SwapperSuite(ConformanceSuite):
    """Conformance tests for a swapper, built as the engine builds it:
    ``cls(kv_caches, num_blocks, directory=...)``.

    Attributes:
        registered_name: the swapper's registered name (required).
        device: where the device cache lives.
        dtypes: cache dtypes to test.
        num_device_blocks, num_tier_blocks: the two pools' sizes.
    """

    registry_hook = "register_swappers"
    device: ClassVar[str] = "cpu"
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.bfloat16)
    num_device_blocks: ClassVar[int] = 12
    num_tier_blocks: ClassVar[int] = 6

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "dtype" in metafunc.fixturenames:
            metafunc.parametrize("dtype", list(self.dtypes),
                                 ids=[str(d).removeprefix("torch.") for d in self.dtypes])

    def make_swapper(self, kv_caches: KVCaches, directory: Path) -> Swapper:
        """The swapper under test (override to pass extra constructor arguments)."""
        return self.implementation()(kv_caches, self.num_tier_blocks, directory=str(directory))

    def caches(self, dtype: torch.dtype) -> KVCaches:
        return random_kv_caches(3, self.num_device_blocks, 4, 2, 16, dtype, self.device)

    @staticmethod
    def snapshot(kv_caches: KVCaches) -> list[torch.Tensor]:
        return [cache.clone() for layer in kv_caches for cache in layer]

    @staticmethod
    def blocks(kv_caches: KVCaches, ids: list[int]) -> list[torch.Tensor]:
        index = torch.tensor(ids, device=kv_caches[0][0].device)
        return [cache[index].cpu() for layer in kv_caches for cache in layer]

    def test_is_a_swapper(self, tmp_path: Path) -> None:
        swapper = self.make_swapper(self.caches(torch.float32), tmp_path)
        assert isinstance(swapper, Swapper)
        assert swapper.num_blocks == self.num_tier_blocks
        assert swapper.block_bytes == 3 * 2 * 4 * 2 * 16 * 4

    def test_round_trip_keeps_every_layer_bit_for_bit(self, tmp_path: Path, dtype) -> None:
        kv = self.caches(dtype)
        swapper = self.make_swapper(kv, tmp_path)
        out_ids, tier_ids = [7, 2, 9], [4, 0, 5]
        expected = self.blocks(kv, out_ids)
        swapper.copy_out(out_ids, tier_ids)
        for layer in kv:
            for cache in layer:
                cache[out_ids] = 0  # the device blocks are reused meanwhile
        untouched = self.snapshot(kv)
        back_ids = [1, 10, 3]
        swapper.copy_in(tier_ids, back_ids)
        for got, want in zip(self.blocks(kv, back_ids), expected):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
        others = [i for i in range(self.num_device_blocks) if i not in back_ids]
        for now, before in zip(self.snapshot(kv), untouched):
            torch.testing.assert_close(now[others], before[others], atol=0, rtol=0,
                                       msg="copy_in wrote outside the blocks it was given")

    def test_tier_blocks_are_independent(self, tmp_path: Path) -> None:
        """Writing one tier block leaves the others' contents alone."""
        kv = self.caches(torch.float32)
        swapper = self.make_swapper(kv, tmp_path)
        swapper.copy_out([0, 1], [0, 1])
        first = self.blocks(kv, [0])
        swapper.copy_out([5], [1])
        swapper.copy_in([0, 1], [8, 9])
        for got, want in zip(self.blocks(kv, [8]), first):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
        for got, want in zip(self.blocks(kv, [9]), self.blocks(kv, [5])):
            torch.testing.assert_close(got, want, atol=0, rtol=0)

    def test_empty_copies_do_nothing(self, tmp_path: Path) -> None:
        kv = self.caches(torch.float32)
        before = self.snapshot(kv)
        swapper = self.make_swapper(kv, tmp_path)
        swapper.copy_out([], [])
        swapper.copy_in([], [])
        swapper.copy_device([])
        for now, then in zip(self.snapshot(kv), before):
            torch.testing.assert_close(now, then, atol=0, rtol=0)

    def test_copy_device_runs_copy_on_write_copies(self, tmp_path: Path) -> None:
        kv = self.caches(torch.float32)
        swapper = self.make_swapper(kv, tmp_path)
        expected = self.blocks(kv, [2, 3])
        swapper.copy_device([(2, 6), (3, 11)])
        for got, want in zip(self.blocks(kv, [6, 11]), expected):
            torch.testing.assert_close(got, want, atol=0, rtol=0)

    def test_measure_bandwidth_is_positive(self, tmp_path: Path) -> None:
        swapper = self.make_swapper(self.caches(torch.float32), tmp_path)
        assert swapper.measure_bandwidth() > 0
