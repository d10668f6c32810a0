"""The OpenAPI schema says what the server does (issue 19, item 12): the errors it answers,
in OpenAI's schema with their headers, the ranges of the fields, the streaming responses;
no 422, which the server never sends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import httpx
import pytest

from .conftest import (
    UNICODE_KEY,
    assert_error,
    assert_still_serving,
    post,
    start_server,
    tiny_model,
)

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def operations(schema: dict):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_every_error_the_server_sends_is_documented_and_no_422(server):
    response = httpx.get(f"{server.base_url}/openapi.json")
    schema = response.json()
    assert "422" not in json.dumps(schema["paths"])
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    for path, method, operation in operations(schema):
        responses = operation["responses"]
        assert "503" in responses and "Retry-After" in responses["503"]["headers"], path
        assert "401" not in responses and "security" not in operation  # no --api-key here
        if method == "post":
            assert {"400", "408", "413"} <= set(responses), path
        for status, documented in responses.items():
            if status != "200":
                assert documented["content"]["application/json"]["schema"] == ERROR_REF


def test_the_schema_gives_the_fields_ranges_and_the_streaming_responses(server):
    schema = httpx.get(f"{server.base_url}/openapi.json").json()
    schemas = schema["components"]["schemas"]
    completion = schemas["CompletionRequest"]["properties"]
    assert completion["n"]["minimum"] == 1 and completion["n"]["maximum"] == 128
    assert completion["temperature"]["anyOf"][0]["minimum"] == 0
    assert completion["top_p"]["anyOf"][0] == {"type": "number", "exclusiveMinimum": 0,
                                               "maximum": 1}
    assert completion["logprobs"]["anyOf"][0]["maximum"] == 20
    assert completion["seed"]["anyOf"][0]["maximum"] == 2**64 - 1
    assert completion["logit_bias"]["anyOf"][0]["additionalProperties"] is False
    chat = schemas["ChatCompletionRequest"]
    assert chat["properties"]["top_logprobs"]["anyOf"][0]["maximum"] == 20
    assert schemas["ChatMessage"]["required"] == ["role", "content"]
    assert schemas["DetokenizeRequest"]["properties"]["tokens"]["items"]["type"] == "integer"
    paths = schema["paths"]
    for path in ("/v1/completions", "/v1/chat/completions"):
        content = paths[path]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}
    assert "content" not in paths["/health"]["get"]["responses"]["200"]
    health = httpx.get(f"{server.base_url}/health")
    assert health.content == b"" and "content-type" not in health.headers
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


def test_405_carries_allow_and_unknown_routes_are_404_in_the_error_schema(server):
    wrong_method = httpx.get(f"{server.url}/completions")
    assert_error(wrong_method, 405, None, "Method Not Allowed")
    assert wrong_method.headers["allow"] == "POST"
    assert_error(httpx.delete(f"{server.base_url}/health"), 405, None, "Not Allowed")
    assert_error(post(server.base_url, "/v2/nothing", {}), 404, None, "Not Found")
    assert_still_serving(server.base_url)


def test_with_an_api_key_the_schema_documents_401_and_bearer_security(unicode_key_server):
    key = {"authorization": b"Bearer " + UNICODE_KEY.encode()}
    schema = httpx.get(f"{unicode_key_server.base_url}/openapi.json", headers=key).json()
    assert schema["components"]["securitySchemes"] == {"bearer": {"type": "http",
                                                                  "scheme": "bearer"}}
    for path, _, operation in operations(schema):
        documented = "401" in operation["responses"]
        assert documented == (path not in ("/health", "/metrics", "/version")), path
        if documented:
            assert operation["security"] == [{"bearer": []}]
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]


@pytest.mark.slow
def test_schemathesis_finds_the_schema_true(tiny_folder):
    """Fuzz a live server from its own schema (about two minutes). Skipped unless the
    ``schemathesis`` command is installed (or ``OCTAVO_SCHEMATHESIS`` names it).

    Every check runs but ``positive_data_acceptance``: JSON Schema cannot say that a prompt
    plus ``max_tokens`` must fit the context, that prompt text is bounded by it, or that
    ``best_of`` equals ``n``, so such schema-valid requests are refused with 400 by design.
    """
    command = os.environ.get("OCTAVO_SCHEMATHESIS") or shutil.which("schemathesis")
    if command is None:
        pytest.skip("schemathesis is not installed")
    background = start_server(tiny_model(tiny_folder, num_gpu_blocks_override=512), max_n=8)
    try:
        run = subprocess.run(
            [command, "run", f"{background.base_url}/openapi.json", "--checks", "all",
             "--exclude-checks", "positive_data_acceptance", "--phases", "coverage,fuzzing",
             "--max-examples", "10", "--max-time", "120", "--request-timeout", "60",
             "--workers", "1"], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-6000:]
        assert_still_serving(background.base_url)
    finally:
        background.stop()
