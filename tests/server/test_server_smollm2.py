"""The server on the real demo model (SmolLM2-135M-Instruct): the same greedy text as
``octavo.LLM``, through the chat template and the openai client. One model load for both."""

from __future__ import annotations

import openai
import pytest

from octavo import LLM, AsyncLLM, SamplingParams
from octavo_server.models import DEMO_MODEL_NAME, ServedModel

from .conftest import start_server

pytestmark = pytest.mark.slow

QUESTION = [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The capital of France is"
GREEDY = SamplingParams(temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def demo():
    """The offline answers first, then the same engine behind a server."""
    llm = LLM(device="cpu", num_gpu_blocks_override=512)
    expected = {"chat": llm.chat(QUESTION, GREEDY, use_tqdm=False)[0].outputs[0],
                "completion": llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].outputs[0]}
    served = ServedModel(DEMO_MODEL_NAME, AsyncLLM(engine=llm.engine), DEMO_MODEL_NAME)
    background = start_server(served)
    yield background, expected
    background.stop()


def test_demo_chat_and_completion_equal_offline_greedy(demo):
    server, expected = demo
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [DEMO_MODEL_NAME]
    chat = client.chat.completions.create(model=DEMO_MODEL_NAME, messages=QUESTION,
                                          temperature=0, max_completion_tokens=24)
    assert chat.choices[0].message.content == expected["chat"].text
    assert "Paris" in chat.choices[0].message.content
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                       client.chat.completions.create(model=DEMO_MODEL_NAME, messages=QUESTION,
                                                      temperature=0, max_completion_tokens=24,
                                                      stream=True))
    assert streamed == expected["chat"].text
    completion = client.completions.create(model=DEMO_MODEL_NAME, prompt=PROMPT, temperature=0,
                                           max_tokens=24)
    assert completion.choices[0].text == expected["completion"].text
    assert completion.choices[0].finish_reason == expected["completion"].finish_reason
