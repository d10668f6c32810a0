"""AsyncLLM: streamed deltas add up to the offline result; aborts and bad input lose nothing."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from octavo import LLM, AsyncLLM, SamplingParams
from octavo.engine.llm_engine import LLMEngine
from octavo.testing.tiny_models import save_tiny_model

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    save_tiny_model(path, "llama")
    return path


def make_async(folder) -> AsyncLLM:
    return AsyncLLM(str(folder), device="cpu", block_size=4, num_gpu_blocks_override=128)


def free_blocks(engine: LLMEngine) -> tuple[int, int]:
    kv = engine.core.scheduler.kv_cache
    return kv.num_free_blocks, kv.num_blocks


async def collect(llm: AsyncLLM, prompt, params=GREEDY, request_id=None):
    deltas, tokens, last = [], [], None
    async for out in llm.generate(prompt, params, request_id=request_id):
        deltas.append(out.outputs[0].delta_text)
        tokens.extend(out.outputs[0].delta_token_ids)
        last = out
    return "".join(deltas), tokens, last


def test_concurrent_streams_equal_offline_generation(folder):
    prompts = [[5, 9, 30, 7], [11, 3, 3, 60, 21, 8, 9], [70]]
    offline = LLM(str(folder), device="cpu", block_size=4).generate(prompts, GREEDY)

    async def main():
        llm = make_async(folder)
        results = await asyncio.gather(*(collect(llm, p) for p in prompts))
        await llm.shutdown()
        return llm, results

    llm, results = asyncio.run(main())
    for (text, tokens, last), ref in zip(results, offline):
        assert last.finished and last.outputs[0].finish_reason == "length"
        assert tokens == ref.outputs[0].token_ids == last.outputs[0].token_ids
        assert text == ref.outputs[0].text
    assert free_blocks(llm.engine)[0] == free_blocks(llm.engine)[1]


def test_abort_and_early_exit_free_blocks_while_others_continue(folder):
    long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)

    async def main():
        llm = make_async(folder)
        finished = asyncio.create_task(collect(llm, [4, 5, 6], GREEDY))

        async def abort_after_three():
            seen = 0
            async for out in llm.generate([7, 8, 9], long, request_id="victim"):
                seen += 1
                if seen == 3:
                    await llm.abort("victim")
                if out.finished:
                    return out

        async def leave_early():
            async for _ in llm.generate([10, 11], long):
                break  # the client went away

        aborted = await abort_after_three()
        await leave_early()
        text, tokens, last = await finished
        await llm.shutdown()
        return llm, aborted, last

    llm, aborted, last = asyncio.run(main())
    assert aborted.outputs[0].finish_reason == "abort"
    assert len(aborted.outputs[0].token_ids) < 200
    assert last.outputs[0].finish_reason == "length" and len(last.outputs[0].token_ids) == 12
    assert free_blocks(llm.engine)[0] == free_blocks(llm.engine)[1]
    assert not llm.engine.has_unfinished_requests()


def test_bad_request_raises_and_the_others_keep_streaming(folder):
    async def main():
        llm = make_async(folder)
        good = asyncio.create_task(collect(llm, [4, 5, 6]))
        await asyncio.sleep(0)
        with pytest.raises(ValueError, match="empty"):
            await collect(llm, "")
        with pytest.raises(ValueError, match="token ids"):
            await collect(llm, [1, 10**9])
        result = await good
        await llm.shutdown()
        return llm, result

    llm, (_, tokens, last) = asyncio.run(main())
    assert len(tokens) == 12 and last.finished
    assert free_blocks(llm.engine)[0] == free_blocks(llm.engine)[1]


def test_duplicate_request_id_is_rejected(folder):
    async def main():
        llm = make_async(folder)
        first = asyncio.create_task(collect(llm, [4, 5, 6], request_id="same"))
        await asyncio.sleep(0)
        with pytest.raises(ValueError, match="already in use"):
            await collect(llm, [4, 5], request_id="same")
        await first
        await llm.shutdown()

    asyncio.run(main())


def test_the_event_loop_never_waits_for_a_step(folder):
    """Adding, aborting and reading stats while a long step runs: the loop keeps ticking
    (it used to wait on the engine lock for the whole step)."""
    step_seconds = 0.6

    async def main():
        llm = make_async(folder)
        real_step = llm.engine.step
        stepping = threading.Event()

        def slow_step():
            stepping.set()
            time.sleep(step_seconds)
            return real_step()

        llm.engine.step = slow_step
        gaps, done = [], asyncio.Event()

        async def ticker():
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        first = asyncio.create_task(collect(llm, [4, 5, 6]))
        await asyncio.to_thread(stepping.wait)  # a step is running now
        start = time.perf_counter()
        victim = llm.add_request([7, 8, 9], GREEDY, request_id="victim")
        queued = llm.stats().num_waiting
        abort = asyncio.create_task(llm.abort("victim"))
        second = asyncio.create_task(collect(llm, [10, 11]))
        handed_over = time.perf_counter() - start
        await abort
        outputs = [out async for out in victim]
        results = await asyncio.gather(first, second)
        done.set()
        await ticking
        await llm.shutdown()
        return llm, handed_over, queued, gaps, outputs, results

    llm, handed_over, queued, gaps, outputs, results = asyncio.run(main())
    assert handed_over < 0.1 and max(gaps) < step_seconds / 3
    assert queued >= 1  # a request handed over but not yet taken in counts as waiting
    assert outputs[-1].outputs[0].finish_reason == "abort"
    assert all(len(tokens) == 12 for _, tokens, _ in results)
    assert free_blocks(llm.engine)[0] == free_blocks(llm.engine)[1]
