"""SamplingParams: defaults, validation of every field, normalisation, child clones."""

import dataclasses

import pytest

from octavo.sampling_params import MIN_TEMPERATURE, SamplingParams


def test_defaults_are_vllm_like():
    params = SamplingParams()
    assert (params.n, params.temperature, params.top_p, params.top_k, params.min_p) == (
        1, 1.0, 1.0, 0, 0.0)
    assert (params.repetition_penalty, params.presence_penalty, params.frequency_penalty) == (
        1.0, 0.0, 0.0)
    assert params.logit_bias is None and params.seed is None
    assert (params.max_tokens, params.min_tokens) == (16, 0)
    assert params.stop == [] and params.stop_token_ids == []
    assert not params.ignore_eos and not params.include_stop_str_in_output
    assert params.skip_special_tokens
    assert params.logprobs is None and params.prompt_logprobs is None
    assert not params.greedy


# (field, bad value, words the message must contain)
INVALID = [
    ("n", 0, ">= 1"), ("n", True, "int"), ("n", 1.0, "int"), ("n", "2", "int"),
    ("temperature", -0.1, ">= 0"), ("temperature", float("nan"), "finite"),
    ("temperature", float("inf"), "finite"), ("temperature", "hot", "real"),
    ("temperature", False, "real"),
    ("top_p", 0.0, "(0, 1]"), ("top_p", 1.01, "<= 1"), ("top_p", -0.5, "(0, 1]"),
    ("top_p", None, "real"),
    ("top_k", -2, ">= 1"), ("top_k", 2.5, "int"), ("top_k", True, "int"),
    ("min_p", -0.01, "[0.0, 1.0]"), ("min_p", 1.5, "[0.0, 1.0]"),
    ("repetition_penalty", 0.0, "> 0"), ("repetition_penalty", -1.0, "> 0"),
    ("repetition_penalty", float("inf"), "finite"),
    ("presence_penalty", 2.5, "[-2.0, 2.0]"), ("presence_penalty", -2.01, "[-2.0, 2.0]"),
    ("frequency_penalty", 3, "[-2.0, 2.0]"), ("frequency_penalty", "x", "real"),
    ("logit_bias", {1: 100.5}, "[-100.0, 100.0]"), ("logit_bias", {-1: 1.0}, ">= 0"),
    ("logit_bias", {"abc": 1.0}, "token ids"), ("logit_bias", {"-3": 1.0}, "token ids"),
    ("logit_bias", {1.5: 1.0}, "token ids"), ("logit_bias", {True: 1.0}, "token ids"),
    ("logit_bias", [1, 2], "dict"), ("logit_bias", {1: "a"}, "real"),
    ("seed", 1.5, "int"), ("seed", True, "int"), ("seed", 2**64, "must be in ["),
    ("seed", -(2**63) - 1, "must be in ["),
    ("max_tokens", 0, ">= 1"), ("max_tokens", 2.0, "int"),
    ("min_tokens", -1, ">= 0"), ("min_tokens", 17, "<= max_tokens"),
    ("stop", "", "non-empty"), ("stop", ["a", ""], "non-empty"), ("stop", ["a", 3], "non-empty"),
    ("stop", 5, "string"),
    ("stop_token_ids", [1, -2], ">= 0"), ("stop_token_ids", [1, "2"], "int"),
    ("stop_token_ids", 7, "list"), ("stop_token_ids", "12", "list"),
    ("ignore_eos", 1, "bool"), ("skip_special_tokens", "yes", "bool"),
    ("include_stop_str_in_output", None, "bool"),
    ("logprobs", -1, "[0, 20]"), ("logprobs", 21, "[0, 20]"), ("logprobs", 1.0, "int"),
    ("prompt_logprobs", 21, "[0, 20]"), ("prompt_logprobs", True, "int"),
]


@pytest.mark.parametrize(("field", "value", "words"), INVALID)
def test_invalid_values_raise_naming_the_field(field, value, words):
    with pytest.raises(ValueError) as info:
        SamplingParams(**{field: value})
    assert field in str(info.value)
    assert words in str(info.value)


def test_every_field_is_covered_by_the_invalid_table():
    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    assert fields == {field for field, _, _ in INVALID}


def test_valid_edge_values_are_accepted():
    SamplingParams(temperature=0, top_p=1e-6, top_k=1, min_p=1.0, repetition_penalty=1e-3,
                   presence_penalty=-2, frequency_penalty=2, logit_bias={0: -100, 5: 100},
                   seed=-(2**63), max_tokens=1, min_tokens=1, logprobs=0, prompt_logprobs=20)
    SamplingParams(seed=2**64 - 1, max_tokens=None, min_tokens=1000)


def test_normalisation():
    params = SamplingParams(stop="###", stop_token_ids=(7, 8), top_k=-1,
                            logit_bias={"42": 1, 7: -3}, temperature=1, presence_penalty=1)
    assert params.stop == ["###"]
    assert params.stop_token_ids == [7, 8]
    assert params.top_k == 0
    assert params.logit_bias == {42: 1.0, 7: -3.0}
    assert all(type(v) is float for v in params.logit_bias.values())
    assert type(params.temperature) is float and type(params.presence_penalty) is float
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]


def test_tiny_temperature_is_raised_to_the_minimum():
    assert SamplingParams(temperature=1e-9).temperature == MIN_TEMPERATURE
    assert SamplingParams(temperature=0.0).temperature == 0.0


@pytest.mark.parametrize(("kwargs", "greedy"), [
    ({"temperature": 0.0}, True), ({"top_k": 1}, True), ({"temperature": 0.5}, False),
    ({"top_k": 2}, False), ({"top_p": 0.1}, False)])
def test_greedy(kwargs, greedy):
    assert SamplingParams(**kwargs).greedy is greedy


def test_clone_for_child():
    params = SamplingParams(n=3, seed=10, stop=["x"], stop_token_ids=[5], logit_bias={1: 2.0},
                            temperature=0.7)
    child = params.clone_for_child(2)
    assert (child.n, child.seed, child.temperature) == (1, 12, 0.7)
    assert child.stop == ["x"] and child.stop is not params.stop
    assert child.stop_token_ids is not params.stop_token_ids
    assert child.logit_bias == {1: 2.0} and child.logit_bias is not params.logit_bias
    assert params.n == 3 and params.seed == 10
    assert SamplingParams(n=2).clone_for_child(1).seed is None
    wrapped = SamplingParams(n=4, seed=2**64 - 2).clone_for_child(3)
    assert wrapped.seed == 1


def test_verify_token_ids():
    params = SamplingParams(logit_bias={3: 1.0}, stop_token_ids=[9])
    params.verify_token_ids(10)
    with pytest.raises(ValueError, match="stop_token_ids"):
        params.verify_token_ids(9)
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={10: 1.0}).verify_token_ids(10)
