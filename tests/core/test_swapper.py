"""The host swapper moves whole blocks out of the device pool and back, bit for bit."""

import pytest
import torch

from octavo.kv_cache import HostSwapper
from octavo.plugins import swappers


def test_swap_out_and_in_restores_blocks():
    torch.manual_seed(0)
    caches = [(torch.randn(6, 4, 2, 8), torch.randn(6, 4, 2, 8)) for _ in range(3)]
    original = [(k.clone(), v.clone()) for k, v in caches]
    swapper = HostSwapper(caches, num_blocks=4)
    host_ids = swapper.swap_out([1, 4])
    assert swapper.num_free_blocks == 2
    for k, v in caches:  # the device blocks are reused by someone else meanwhile
        k[[1, 4]] = 0
        v[[1, 4]] = 0
    swapper.swap_in(host_ids, [0, 5])
    assert swapper.num_free_blocks == 4
    for (k, v), (k0, v0) in zip(caches, original):
        torch.testing.assert_close(k[[0, 5]], k0[[1, 4]], rtol=0, atol=0)
        torch.testing.assert_close(v[[0, 5]], v0[[1, 4]], rtol=0, atol=0)


def test_swap_out_beyond_capacity_raises():
    caches = [(torch.zeros(4, 2, 1, 4), torch.zeros(4, 2, 1, 4))]
    swapper = HostSwapper(caches, num_blocks=1)
    with pytest.raises(RuntimeError, match="swap space full"):
        swapper.swap_out([0, 1])
    with pytest.raises(ValueError):
        swapper.swap_in([0], [0, 1])


def test_host_swapper_is_the_registered_default():
    assert swappers().get("host") is HostSwapper
