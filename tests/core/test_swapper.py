"""Swappers store whole KV blocks in a second tier and copy them back, bit for bit."""

import os

import pytest
import torch

from octavo.kv_cache import HostSwapper
from octavo.kv_cache.swapper import DiskSwapper, TierUnavailable
from octavo.plugins import swappers


def _caches(num_blocks=6, layers=3):
    torch.manual_seed(0)
    return [(torch.randn(num_blocks, 4, 2, 8), torch.randn(num_blocks, 4, 2, 8))
            for _ in range(layers)]


@pytest.mark.parametrize("kind", ["host", "disk"])
def test_copy_out_and_in_restores_blocks(kind, tmp_path):
    caches = _caches()
    original = [(k.clone(), v.clone()) for k, v in caches]
    swapper = swappers().get(kind)(caches, 4, directory=str(tmp_path))
    swapper.copy_out([1, 4], [3, 0])
    for k, v in caches:  # the device blocks are reused by someone else meanwhile
        k[[1, 4]] = 0
        v[[1, 4]] = 0
    swapper.copy_in([3, 0], [0, 5])
    for (k, v), (k0, v0) in zip(caches, original):
        torch.testing.assert_close(k[[0, 5]], k0[[1, 4]], rtol=0, atol=0)
        torch.testing.assert_close(v[[0, 5]], v0[[1, 4]], rtol=0, atol=0)
    assert swapper.block_bytes == 3 * 2 * 4 * 2 * 8 * 4


def test_mismatched_copies_are_refused():
    swapper = HostSwapper(_caches(), 2)
    with pytest.raises(ValueError):
        swapper.copy_out([0, 1], [0])
    with pytest.raises(ValueError):
        swapper.copy_in([0], [0, 1])
    with pytest.raises(ValueError, match="at least one block"):
        HostSwapper(_caches(), 0)


def test_copy_device_runs_copy_on_write_copies():
    caches = _caches()
    swapper = HostSwapper(caches, 2)
    swapper.copy_device([(2, 5), (0, 1)])
    for k, v in caches:
        torch.testing.assert_close(k[5], k[2], rtol=0, atol=0)
        torch.testing.assert_close(v[1], v[0], rtol=0, atol=0)


def test_disk_tier_leaves_no_file_and_fails_clearly_when_unwritable(tmp_path):
    DiskSwapper(_caches(), 4, directory=str(tmp_path))
    assert os.listdir(tmp_path) == []  # unlinked once mapped
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as a user who can write anywhere")
    with pytest.raises(TierUnavailable, match="disk tier under"):
        DiskSwapper(_caches(), 4, directory=str(locked))


def test_disk_tier_under_a_file_fails_clearly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TierUnavailable, match="disk tier under"):
        DiskSwapper(_caches(), 4, directory=str(blocker / "sub"))


def test_disk_tier_on_a_full_disk_fails_clearly(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(TierUnavailable, match="No space left"):
        DiskSwapper(_caches(), 4, directory=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_measured_bandwidth_is_positive():
    assert HostSwapper(_caches(), 4).measure_bandwidth() > 0


def test_registered_swappers():
    assert swappers().get("host") is HostSwapper
    assert swappers().get("disk") is DiskSwapper
