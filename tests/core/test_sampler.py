"""The vectorised sampler against straightforward per-row reference implementations."""

import math
import random

import pytest
import torch

from octavo.engine import sampling_ops as ops
from octavo.engine.sampler import Sampler, SamplingRow, compute_prompt_logprobs
from octavo.sampling_params import SamplingParams

VOCAB = 64
BATCH_SIZES = [1, 3, 8]


def _row(rng: random.Random, params: SamplingParams, eos=frozenset({0}), output_len=None,
         generator=None) -> SamplingRow:
    prompt = [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 12))]
    n_out = rng.randrange(0, 10) if output_len is None else output_len
    output = [rng.randrange(VOCAB) for _ in range(n_out)]
    return SamplingRow(params, prompt, output, generator, eos)


def _random_params(rng: random.Random, **overrides) -> SamplingParams:
    kwargs = dict(
        temperature=rng.choice([0.0, 0.5, 1.0, 1.7]),
        top_k=rng.choice([0, 0, 1, 5, 20, VOCAB + 10]),
        top_p=rng.choice([1.0, 1.0, 0.9, 0.5, 0.05]),
        min_p=rng.choice([0.0, 0.0, 0.05, 0.3]),
        repetition_penalty=rng.choice([1.0, 1.0, 1.3, 0.8]),
        presence_penalty=rng.choice([0.0, 0.0, 0.7, -1.2]),
        frequency_penalty=rng.choice([0.0, 0.0, 0.4, -0.5]),
        logit_bias=rng.choice([None, {rng.randrange(VOCAB): rng.uniform(-100, 100),
                                      rng.randrange(VOCAB): rng.uniform(-5, 5)}]),
        min_tokens=rng.choice([0, 0, 3, 12]),
        max_tokens=None,
        stop_token_ids=rng.choice([None, [rng.randrange(VOCAB), rng.randrange(VOCAB)]]),
        ignore_eos=rng.choice([False, True]),
    )
    kwargs.update(overrides)
    return SamplingParams(**kwargs)


# ---------------------------------------------------------------- per-row references


def ref_process(logits: torch.Tensor, row: SamplingRow) -> torch.Tensor:
    """logit_bias, min_tokens, repetition, presence/frequency, one token at a time."""
    p = row.params
    out = logits.clone().tolist()
    for token, bias in (p.logit_bias or {}).items():
        out[token] += bias
    if len(row.output_token_ids) < p.min_tokens:
        banned = set(p.stop_token_ids) | set(row.eos_token_ids)
        for token in banned:
            out[token] = float("-inf")
    if p.repetition_penalty != 1.0:
        for token in set(row.prompt_token_ids) | set(row.output_token_ids):
            if out[token] > 0:
                out[token] /= p.repetition_penalty
            else:
                out[token] *= p.repetition_penalty
    for token in set(row.output_token_ids):
        count = row.output_token_ids.count(token)
        out[token] -= count * p.frequency_penalty + p.presence_penalty
    return torch.tensor(out)


def ref_filter(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p for one row; masked tokens become -inf."""
    scaled = (logits / params.temperature).tolist()
    order = sorted(range(len(scaled)), key=lambda t: -scaled[t])
    keep = set(order[:params.top_k] if params.top_k else order)
    if params.top_p < 1.0:
        live = [t for t in order if t in keep]
        weights = [math.exp(scaled[t] - scaled[live[0]]) for t in live]
        total, mass, nucleus = sum(weights), 0.0, set()
        for token, weight in zip(live, weights):
            nucleus.add(token)
            mass += weight / total
            if mass >= params.top_p:
                break
        keep = nucleus
    if params.min_p > 0.0:
        best = max(scaled[t] for t in keep)
        keep = {t for t in keep
                if math.exp(scaled[t] - best) >= params.min_p}
    return torch.tensor([v if t in keep else float("-inf") for t, v in enumerate(scaled)])


def _assert_same_mask_and_values(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.equal(torch.isinf(actual), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite], expected[finite], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("seed", range(4))
def test_greedy_is_argmax(batch, seed):
    rng = random.Random(seed)
    logits = torch.randn(batch, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3
    rows = [_row(rng, SamplingParams(**rng.choice([{"temperature": 0.0}, {"top_k": 1}])))
            for _ in range(batch)]
    before = logits.clone()
    out = Sampler().sample(logits, rows)
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    assert out.logprobs == [None] * batch
    assert torch.equal(logits, before)  # the caller's logits are left alone


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("seed", range(6))
def test_process_logits_matches_reference(batch, seed):
    rng = random.Random(seed)
    logits = torch.randn(batch, VOCAB, generator=torch.Generator().manual_seed(seed)) * 2
    rows = [_row(rng, _random_params(rng)) for _ in range(batch)]
    actual = Sampler().process_logits(logits, rows)
    for i, row in enumerate(rows):
        _assert_same_mask_and_values(actual[i], ref_process(logits[i], row))


@pytest.mark.parametrize("step", ["logit_bias", "min_tokens", "repetition", "presence",
                                  "frequency"])
def test_each_processor_alone(step):
    rng = random.Random(step)
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(1))
    kwargs = {
        "logit_bias": {"logit_bias": {3: 50.0, 4: -100.0, 60: 0.25}},
        "min_tokens": {"min_tokens": 5, "stop_token_ids": [7, 9], "max_tokens": None},
        "repetition": {"repetition_penalty": 1.5},
        "presence": {"presence_penalty": 1.5},
        "frequency": {"frequency_penalty": -0.75},
    }[step]
    rows = [_row(rng, SamplingParams(**kwargs), eos=frozenset({0, 2}), output_len=n)
            for n in (0, 2, 4, 5, 9)]
    actual = Sampler().process_logits(logits, rows)
    changed = False
    for i, row in enumerate(rows):
        expected = ref_process(logits[i], row)
        _assert_same_mask_and_values(actual[i], expected)
        changed |= not torch.equal(expected, logits[i])
    assert changed  # the step did something in this scenario


def test_min_tokens_masks_eos_and_stop_ids_even_when_eos_is_ignored():
    logits = torch.zeros(3, 8)
    logits[:, 0] = logits[:, 5] = 10.0  # eos 0 and stop token 5 are the likeliest
    rows = [SamplingRow(SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[5]),
                        [1], [3], None, frozenset({0})),
            SamplingRow(SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[5],
                                       ignore_eos=True), [1], [3], None, frozenset({0})),
            SamplingRow(SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[5]),
                        [1], [3, 4], None, frozenset({0}))]
    processed = Sampler().process_logits(logits, rows)
    assert processed[0, 0] == processed[0, 5] == float("-inf")
    assert processed[1, 0] == processed[1, 5] == float("-inf")  # ignore_eos changes nothing
    assert torch.equal(processed[2], logits[2])


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("seed", range(6))
def test_filter_logits_matches_reference(batch, seed):
    rng = random.Random(100 + seed)
    logits = torch.randn(batch, VOCAB, generator=torch.Generator().manual_seed(seed)) * 2
    rows = [_row(rng, _random_params(rng, temperature=rng.choice([0.3, 1.0, 2.0]),
                                     top_k=rng.choice([0, 2, 5, 20, VOCAB + 1])))
            for _ in range(batch)]
    actual = Sampler.filter_logits(logits, rows)
    for i, row in enumerate(rows):
        _assert_same_mask_and_values(actual[i], ref_filter(logits[i], row.params))


def _seeded_tokens(logits_steps, params, seed, position, others):
    """Tokens a seeded row samples over several steps, placed at ``position`` among others."""
    generator = torch.Generator().manual_seed(seed)
    sampler, tokens = Sampler(), []
    for step_logits in logits_steps:
        rows = list(others)
        rows.insert(position, SamplingRow(params, [1, 2], list(tokens), generator))
        batch = torch.cat([step_logits[None], torch.randn(len(others), VOCAB)])
        order = list(range(1, len(others) + 1))
        order.insert(position, 0)
        out = sampler.sample(batch[order], rows)
        tokens.append(out.token_ids[position])
    return tokens


def test_seeded_rows_do_not_depend_on_the_batch():
    rng = random.Random(0)
    torch.manual_seed(0)
    steps = [torch.randn(VOCAB) for _ in range(12)]  # flat-ish logits: many likely tokens
    params = SamplingParams(temperature=1.5, top_p=0.95, seed=7, max_tokens=None)
    alone = _seeded_tokens(steps, params, 7, 0, [])
    for position, num_others in [(0, 3), (2, 4), (5, 5)]:
        others = [_row(rng, _random_params(rng)) for _ in range(num_others)]
        if num_others > 2:  # another seeded row in the batch too
            others[1].generator = torch.Generator().manual_seed(99)
        torch.manual_seed(position + 1)  # different default-generator state
        assert _seeded_tokens(steps, params, 7, position, others) == alone
    assert _seeded_tokens(steps, params, 8, 0, []) != alone  # the seed matters


def _empirical(logits: torch.Tensor, params: SamplingParams, draws: int) -> torch.Tensor:
    rows = [SamplingRow(params, [0], [], None) for _ in range(draws)]
    tokens = Sampler().sample(logits.expand(draws, -1), rows).token_ids
    return torch.bincount(torch.tensor(tokens), minlength=logits.shape[0]).double() / draws


@pytest.mark.parametrize("kwargs", [
    {}, {"temperature": 0.6}, {"temperature": 2.0}, {"top_k": 3}, {"top_p": 0.7},
    {"min_p": 0.2}, {"top_k": 4, "top_p": 0.8, "min_p": 0.1, "temperature": 1.3}])
def test_sampling_distribution(kwargs):
    torch.manual_seed(1234)
    logits = torch.tensor([1.0, 0.5, 2.0, -1.0, 0.0, 1.5, -3.0, 0.8])
    params = SamplingParams(**kwargs)
    expected = ref_filter(logits, params).double().softmax(dim=-1)
    draws = 20_000
    freq = _empirical(logits, params, draws)
    sigma = (expected * (1 - expected) / draws).sqrt()
    assert torch.all((freq - expected).abs() <= 5 * sigma + 1e-9), (freq, expected)
    assert torch.all(freq[expected == 0] == 0)  # excluded tokens are never sampled


@pytest.mark.parametrize("kwargs", [{"top_k": 2}, {"top_p": 0.3}, {"min_p": 0.5}])
def test_filters_never_sample_excluded_tokens_in_a_batch(kwargs):
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(256, VOCAB, generator=gen) * 2
    params = SamplingParams(**kwargs)
    rows = [SamplingRow(params, [0], [], None) for _ in range(256)]
    tokens = Sampler().sample(logits, rows).token_ids
    for i, token in enumerate(tokens):
        assert ref_filter(logits[i], params)[token] > float("-inf")


def test_inverse_cdf_picks_the_only_live_token_whatever_the_uniform():
    probs = torch.zeros(5, 10)
    probs[torch.arange(5), torch.tensor([3, 0, 9, 5, 9])] = 1.0
    uniforms = torch.tensor([0.0, 0.5, 0.999999, 1 - 2 ** -53, 0.0], dtype=torch.float64)
    assert ops.sample_inverse_cdf(probs, uniforms).tolist() == [3, 0, 9, 5, 9]


def test_inverse_cdf_splits_the_unit_interval_by_probability():
    """u in [0, 0.2) -> token 1, [0.2, 0.7) -> token 3, [0.7, 1) -> token 4; unnormalised rows
    are scaled by their sum; zero-probability tokens between them are never chosen."""
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3]] * 6 + [[0.0, 2.0, 0.0, 5.0, 3.0]])
    uniforms = torch.tensor([0.0, 0.19, 0.2, 0.69, 0.7, 0.99, 0.5], dtype=torch.float64)
    assert ops.sample_inverse_cdf(probs, uniforms).tolist() == [1, 1, 3, 3, 4, 4, 3]


def test_a_tiny_probability_keeps_its_share():
    """A token far below float32's resolution of the running sum is still reachable."""
    probs = torch.full((1, 49152), 1.0 / 49152)
    probs[0, 30000] = 1e-12
    cdf_before = probs[0, :30000].double().sum()
    just_inside = (cdf_before + 0.5e-12) / probs.double().sum()
    assert ops.sample_inverse_cdf(probs, just_inside.reshape(1)).item() == 30000


def _ref_logprobs(logits_row: torch.Tensor, token: int, k: int):
    logprobs = torch.log_softmax(logits_row.double(), dim=-1)
    order = sorted(range(len(logprobs)), key=lambda t: -logprobs[t].item())
    rank = 1 + sum(1 for v in logprobs.tolist() if v > logprobs[token].item())
    return logprobs[token].item(), rank, [(t, logprobs[t].item(), r + 1)
                                          for r, t in enumerate(order[:k])]


def _check_entry(entry, logits_row, token, k):
    logprob, rank, top = _ref_logprobs(logits_row, token, k)
    assert entry.token_id == token
    assert entry.logprob == pytest.approx(logprob, abs=1e-5)
    assert entry.rank == rank
    assert [t for t, _, _ in entry.top] == [t for t, _, _ in top]
    assert [r for _, _, r in entry.top] == [r for _, _, r in top]
    assert [v for _, v, _ in entry.top] == pytest.approx([v for _, v, _ in top], abs=1e-5)


@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_logprobs_are_of_the_raw_distribution(batch):
    rng = random.Random(batch)
    logits = torch.randn(batch, VOCAB, generator=torch.Generator().manual_seed(batch)) * 3
    ks = [rng.choice([None, 0, 1, 5, 20]) for _ in range(batch)]
    rows = [_row(rng, _random_params(rng, logprobs=k, repetition_penalty=1.5,
                                     logit_bias={1: 30.0}))
            for k in ks]
    out = Sampler().sample(logits, rows)
    for i, k in enumerate(ks):
        if k is None:
            assert out.logprobs[i] is None
        else:
            _check_entry(out.logprobs[i], logits[i], out.token_ids[i], k)
            assert len(out.logprobs[i].top) == k


def test_prompt_logprobs():
    logits = torch.randn(7, VOCAB, generator=torch.Generator().manual_seed(3))
    targets = [5, 0, 63, 17, 17, 2, 40]
    for k in (0, 3):
        entries = compute_prompt_logprobs(logits, torch.tensor(targets), k)
        assert len(entries) == len(targets)
        for i, entry in enumerate(entries):
            _check_entry(entry, logits[i], targets[i], k)
    assert compute_prompt_logprobs(logits[:0], [], 2) == []


def test_out_of_vocab_logit_bias_is_rejected():
    row = SamplingRow(SamplingParams(logit_bias={VOCAB: 1.0}), [1], [])
    with pytest.raises(ValueError, match="logit_bias"):
        Sampler().sample(torch.zeros(1, VOCAB), [row])


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="len\\(rows\\)"):
        Sampler().sample(torch.zeros(2, VOCAB), [SamplingRow(SamplingParams(), [1], [])])


@pytest.mark.gpu
def test_cuda_matches_cpu_and_seeded_rows_are_reproducible():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    rng = random.Random(0)
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(0)) * 2
    rows = [_row(rng, _random_params(rng, logprobs=3)) for _ in range(6)]
    cpu = Sampler().process_logits(logits, rows)
    cuda = Sampler().process_logits(logits.cuda(), rows)
    torch.testing.assert_close(cuda.cpu(), cpu)

    def run(position):
        generator = torch.Generator(device="cuda").manual_seed(11)
        params = SamplingParams(temperature=1.2, seed=11)
        batch = list(rows)
        batch.insert(position, SamplingRow(params, [1], [], generator))
        data = torch.cat([logits[:position], logits[:1] * 0.1, logits[position:]]).cuda()
        return Sampler().sample(data, batch)

    first, second = run(0), run(4)
    assert first.token_ids[0] == second.token_ids[4]
    greedy = [i for i, row in enumerate(rows) if row.params.greedy]
    for i in greedy:
        assert first.token_ids[i + 1] == cpu[i].argmax().item()
    for i in range(len(rows)):
        _check_entry(first.logprobs[i + 1], logits[i], first.token_ids[i + 1], 3)

    small = torch.tensor([1.0, 0.5, 2.0, -1.0, 0.0, 1.5, -3.0, 0.8])
    params = SamplingParams(top_k=4, top_p=0.9, temperature=1.3)
    expected = ref_filter(small, params).double().softmax(dim=-1)
    draws = 50_000
    tokens = Sampler().sample(small.cuda().expand(draws, -1),
                              [SamplingRow(params, [0], [], None)] * draws).token_ids
    freq = torch.bincount(torch.tensor(tokens), minlength=8).double() / draws
    sigma = (expected * (1 - expected) / draws).sqrt()
    assert torch.all((freq - expected).abs() <= 5 * sigma + 1e-9), (freq, expected)
