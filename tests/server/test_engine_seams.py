"""What the server needs from ``AsyncLLM``: queue-now ``add_request``, ``stats()``,
``abort_all()``, and streams that abort when closed (even before they are read)."""

from __future__ import annotations

import asyncio

import pytest

from octavo import AsyncLLM, SamplingParams

LONG = SamplingParams(temperature=0, max_tokens=500, ignore_eos=True)


@pytest.fixture
def llm(tiny_folder) -> AsyncLLM:
    return AsyncLLM(str(tiny_folder), device="cpu", block_size=4, num_gpu_blocks_override=256,
                    max_num_seqs=2)


def test_add_request_validates_at_once_and_queues_nothing_on_bad_input(llm):
    async def main():
        with pytest.raises(ValueError, match="empty"):
            llm.add_request("", LONG)  # raised by the call itself, not by iterating
        assert llm.stats().num_waiting == 0
        stream = llm.add_request([5, 6, 7], SamplingParams(temperature=0, max_tokens=3))
        outputs = [output async for output in stream]
        await llm.shutdown()
        return outputs

    outputs = asyncio.run(main())
    assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 3


def test_stats_and_closing_streams_even_unread_free_every_block(llm):
    async def main():
        streams = [llm.add_request([5 + i, 6, 7], LONG) for i in range(3)]
        queued = llm.stats()
        await anext(streams[0])  # one step ran: two sequences run, one waits
        running = llm.stats()
        for stream in streams:  # streams[1] and [2] were never read
            await stream.aclose()
        await llm.shutdown()
        return queued, running, llm.stats()

    queued, running, closed = asyncio.run(main())
    assert (queued.num_waiting, queued.num_running) == (3, 0)
    assert (running.num_running, running.num_waiting) == (2, 1)
    assert 0 < running.kv_cache_usage < 1 and running.num_free_kv_blocks < 256
    assert (closed.num_running, closed.num_waiting, closed.num_free_kv_blocks) == (0, 0, 256)
    assert closed.kv_cache_usage == 0 and closed.num_kv_blocks == 256 and closed.block_size == 4


def test_abort_all_ends_every_stream_with_abort(llm):
    async def main():
        async def read(stream):
            return [output async for output in stream][-1]

        tasks = [asyncio.create_task(read(llm.add_request([9, i + 3], LONG))) for i in range(3)]
        await asyncio.sleep(0.05)
        await llm.abort_all()
        finals = await asyncio.gather(*tasks)
        await llm.shutdown()
        return finals

    finals = asyncio.run(main())
    assert [f.outputs[0].finish_reason for f in finals] == ["abort"] * 3
    assert not llm.engine.has_unfinished_requests()
