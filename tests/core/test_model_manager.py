"""octavo.entrypoints.model_manager: lazy loads, the memory budget, idle unloading, hot swap.

Most tests use a fake loader (engines that are a tensor of a chosen size), so the policies are
checked fast and exactly; the last ones load real tiny checkpoints.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from types import SimpleNamespace

import pytest
import torch

from octavo.entrypoints.model_manager import (
    InsufficientMemory,
    ModelConflict,
    ModelLoadError,
    ModelManager,
    ModelNotFound,
    ModelSpec,
    ModelState,
)
from octavo.entrypoints.model_memory import engine_tensor_bytes, estimate_bytes
from octavo.testing.tiny_models import save_tiny_model

MB = 1 << 20


class FakeLLM:
    """An engine whose memory is one tensor of ``megabytes``."""

    def __init__(self, source: str, megabytes: int) -> None:
        self.source = source
        weights = torch.nn.Linear(1, 1, bias=False)
        weights.weight = torch.nn.Parameter(torch.zeros(megabytes * MB // 4))
        self.engine = SimpleNamespace(core=SimpleNamespace(runner=SimpleNamespace(
            model=weights, kv_caches=[])))
        self.info = SimpleNamespace(max_model_len=64)
        self.stopped = False

    async def shutdown(self) -> None:
        self.stopped = True


class Loader:
    """Counts loads; ``broken`` sources raise; each load takes ``delay`` seconds."""

    def __init__(self, megabytes: int = 10, delay: float = 0.05) -> None:
        self.megabytes = megabytes
        self.delay = delay
        self.loads: list[str] = []
        self.llms: list[FakeLLM] = []

    def __call__(self, spec: ModelSpec) -> FakeLLM:
        time.sleep(self.delay)
        if "broken" in (spec.model or ""):
            raise OSError(f"no checkpoint at {spec.model}")
        self.loads.append(spec.name)
        self.llms.append(FakeLLM(spec.model, self.megabytes))
        return self.llms[-1]


def specs(*names: str, **kwargs) -> list[ModelSpec]:
    return [ModelSpec(name, f"/models/{name}", memory_gib=10 * MB / (1 << 30), **kwargs)
            for name in names]


def run(coro):
    return asyncio.run(coro)


def test_lazy_load_once_even_for_concurrent_first_requests():
    loader = Loader(delay=0.2)
    manager = ModelManager(specs("a", "b"), loader=loader)

    async def main():
        assert [m.state for m in manager] == [ModelState.UNLOADED] * 2
        leases = await asyncio.gather(*(manager.acquire("a") for _ in range(8)))
        assert loader.loads == ["a"] and len({id(lease.llm) for lease in leases}) == 1
        for lease in leases:
            lease.release()
        (await manager.acquire("a")).release()
        assert loader.loads == ["a"]
        assert manager.get("a").state is ModelState.LOADED
        assert manager.get("b").state is ModelState.UNLOADED
        await manager.shutdown()

    run(main())


def test_other_models_serve_while_one_loads():
    loader = Loader(delay=0.5)
    manager = ModelManager(specs("a", "b"), loader=loader)

    async def main():
        (await manager.acquire("a")).release()
        slow = asyncio.ensure_future(manager.acquire("b"))
        await asyncio.sleep(0.05)
        assert manager.get("b").state is ModelState.LOADING
        start = time.monotonic()
        (await manager.acquire("a")).release()
        assert time.monotonic() - start < 0.1  # not behind b's load
        (await slow).release()

    run(main())


def test_budget_evicts_the_least_recently_used_idle_model():
    loader = Loader()
    manager = ModelManager(specs("a", "b", "c"), loader=loader, memory_budget_bytes=25 * MB)

    async def main():
        for name in ("a", "b", "a", "c"):  # c evicts b, used before the second a
            (await manager.acquire(name)).release()
        assert {m.name: m.state.value for m in manager} == {
            "a": "loaded", "b": "unloaded", "c": "loaded"}
        for name in ("b", "a", "b"):
            (await manager.acquire(name)).release()
        assert loader.loads == ["a", "b", "c", "b", "a"]
        await asyncio.sleep(0)
        stopped = [llm.stopped for llm in loader.llms]
        assert stopped == [True, True, True, False, False]  # a, b, c evicted; then b, a live
        assert manager.used_bytes() <= 25 * MB

    run(main())


def test_a_model_with_requests_in_flight_or_pinned_is_never_evicted():
    manager = ModelManager(specs("a", "b"), loader=Loader(), memory_budget_bytes=15 * MB)

    async def main():
        lease = await manager.acquire("a")
        with pytest.raises(InsufficientMemory, match="1 requests in flight"):
            await manager.acquire("b")
        assert manager.get("a").state is ModelState.LOADED
        assert manager.get("b").state is ModelState.UNLOADED
        lease.release()
        (await manager.acquire("b")).release()  # now a is idle: evicted
        assert manager.get("a").state is ModelState.UNLOADED
        manager.pin("b")
        with pytest.raises(InsufficientMemory, match="pinned"):
            await manager.acquire("a")
        with pytest.raises(ModelConflict):
            await manager.unload("b")
        manager.pin("b", False)
        (await manager.acquire("a")).release()
        assert manager.get("b").state is ModelState.UNLOADED

    run(main())


def test_idle_models_unload_but_pinned_ones_stay():
    manager = ModelManager(specs("a") + specs("p", pinned=True), loader=Loader(),
                           idle_unload_s=0.2)

    async def main():
        for name in ("a", "p"):
            (await manager.acquire(name)).release()
        held = await manager.acquire("a")
        await asyncio.sleep(0.6)
        assert manager.get("a").state is ModelState.LOADED  # in use
        held.release()
        await asyncio.sleep(0.6)
        assert manager.get("a").state is ModelState.UNLOADED
        assert manager.get("p").state is ModelState.LOADED
        await manager.shutdown()

    run(main())


def test_swap_routes_new_requests_and_frees_the_old_engine_after_its_requests():
    loader = Loader()
    manager = ModelManager(specs("a"), loader=loader)

    async def main():
        old = await manager.acquire("a")
        await manager.swap("a", "/models/a-v2")
        new = await manager.acquire("a")
        assert new.llm.source == "/models/a-v2" and old.llm.source == "/models/a"
        assert not old.llm.stopped and manager.used_bytes() == 20 * MB
        old_llm = old.llm
        old.release()
        await asyncio.sleep(0.01)
        assert old_llm.stopped and manager.used_bytes() == 10 * MB
        assert manager.get("a").spec.model == "/models/a-v2"
        new.release()

    run(main())


def test_a_swap_or_unload_during_a_lazy_load_waits_for_it():
    loader = Loader(delay=0.3)
    manager = ModelManager(specs("a"), loader=loader)

    async def main():
        first = asyncio.ensure_future(manager.acquire("a"))
        await asyncio.sleep(0.05)
        await manager.swap("a", "/models/a-v2")
        lease = await first
        assert lease.llm.source == "/models/a" and loader.loads == ["a", "a"]
        newer = await manager.acquire("a")
        assert newer.llm.source == "/models/a-v2"
        lease.release()
        newer.release()
        await asyncio.sleep(0.01)
        assert [llm.stopped for llm in loader.llms] == [True, False]
        await manager.unload("a")
        assert manager.get("a").state is ModelState.UNLOADED
        reload = asyncio.ensure_future(manager.acquire("a"))
        await asyncio.sleep(0.05)
        await manager.unload("a")  # waits for the load, then unloads
        (await reload).release()
        await asyncio.sleep(0.01)
        assert manager.get("a").state is ModelState.UNLOADED
        assert all(llm.stopped for llm in loader.llms)

    run(main())


def test_a_failed_swap_keeps_the_old_engine_and_a_failed_load_can_be_retried():
    loader = Loader()
    manager = ModelManager(specs("a") + [ModelSpec("bad", "/broken")], loader=loader)

    async def main():
        (await manager.acquire("a")).release()
        with pytest.raises(ModelLoadError, match="no checkpoint at /broken/v2"):
            await manager.swap("a", "/broken/v2")
        lease = await manager.acquire("a")
        assert lease.llm.source == "/models/a" and manager.get("a").spec.model == "/models/a"
        lease.release()
        for _ in range(2):
            with pytest.raises(ModelLoadError):
                await manager.acquire("bad")
            assert manager.get("bad").state is ModelState.UNLOADED

    run(main())


def test_names_aliases_and_unknown_names():
    manager = ModelManager([ModelSpec("a", "/a", aliases=("first",)), ModelSpec("b", "/b")])
    assert manager.get("first") is manager.get("a") and manager.get(None) is manager.get("a")
    with pytest.raises(ModelNotFound, match=r"serves \['a', 'b', 'first'\]"):
        manager.get("nope")
    with pytest.raises(ValueError, match="already served"):
        manager.add(ModelSpec("c", "/c", aliases=("b",)))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-manager")
    save_tiny_model(path, "llama")
    return path


ENGINE = dict(device="cpu", block_size=4, num_gpu_blocks_override=64, dtype="float32")


@pytest.mark.parametrize("layer_ops", [None, "onednn", "torch"])  # None: the best installed
def test_estimate_is_close_to_the_measured_engine(tiny_folder, monkeypatch, layer_ops):
    """Whatever holds the weights (the CPU kernels' panels, oneDNN's opaque packed tensors or
    plain tensors), the measurement counts them."""
    from octavo import AsyncLLM

    if layer_ops is not None:
        monkeypatch.setenv("OCTAVO_LAYER_OPS", layer_ops)
    llm = AsyncLLM(str(tiny_folder), **ENGINE)
    measured = engine_tensor_bytes(llm)
    runner = llm.engine.core.runner
    parameters = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    kv = sum(k.numel() * k.element_size() * 2 for k, _ in runner.kv_caches)
    assert measured >= parameters + kv
    estimate = estimate_bytes(str(tiny_folder), ENGINE)
    assert 0.5 * measured < estimate < 2 * measured


def test_a_swapped_out_real_engine_is_garbage(tiny_folder, tmp_path):
    save_tiny_model(tmp_path, "llama", seed=1)
    manager = ModelManager([ModelSpec("tiny", str(tiny_folder), ENGINE)])

    async def main():
        lease = await manager.acquire("tiny")
        old = weakref.ref(lease.llm.engine)
        lease.release()
        await manager.swap("tiny", str(tmp_path))
        await asyncio.sleep(0.05)
        del lease
        gc.collect()
        assert old() is None
        lease = await manager.acquire("tiny")
        assert lease.engine.source == str(tmp_path)
        lease.release()
        await manager.shutdown()

    run(main())
