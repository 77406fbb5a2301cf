"""Nudging by whole words (Fei et al. 2024's unit, ``nudging`` with ``unit: word``): the rule on a hand-made
four-token vocabulary written out by hand, the word bookkeeping, the reductions to plain sampling, the exact
log-probabilities against a step-by-step replay of the rule on full prefixes, and the CLI."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from alignkit.decoding import decode_with
from alignkit.decoding.nudging import NudgingGuide, WordNudgingGuide, count_words, word_starts
from alignkit.rollout import Sampler, decode, generate
from test_decoding import PROMPTS, pytestmark  # noqa: F401  (the same prompts and one-thread marker)
from test_decoding_strategies import Fixed, small, trained  # noqa: F401  (module fixtures: two tiny models)

# vocabulary: 0 = "Ġa" (starts a word), 1 = "b" (continues one), 2 = the stop token, 3 = "Ġc" (starts a word)
STARTS = torch.tensor([True, False, True, True])


class PositionFixed(torch.nn.Module):
    """A hand-made 'model' whose next-token logits depend only on the position: table[position]."""

    def __init__(self, rows):
        super().__init__()
        self.table = torch.nn.Parameter(torch.log(torch.tensor(rows, dtype=torch.float32)), requires_grad=False)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True, logits_to_keep=0, **kw):
        return SimpleNamespace(logits=self.table[position_ids.clamp(max=self.table.shape[0] - 1)])


# base: unsure at the first step (top-1 0.5 < gamma 0.6), sure at the second (0.7)
BASE = [[0.5, 0.1, 1e-30, 0.4], [0.1, 0.2, 1e-30, 0.7]]
NUDGE = [0.2, 0.5, 1e-30, 0.3]


def two_tokens(guide, jobs=4000):
    return decode(PositionFixed(BASE), [[0]] * jobs, None, Sampler(seed=5, truncated_logprobs=True), 2, [2], guide=guide)


def check_step(out, step, expected):
    """Every sample's log-prob at ``step`` is log expected[token]; the token frequencies match expected."""
    for d in out:
        assert d.logprobs[step] == pytest.approx(math.log(expected[d.completion_ids[step]]), abs=1e-5)
    for token in (0, 1, 3):
        freq = sum(d.completion_ids[step] == token for d in out) / len(out)
        assert freq == pytest.approx(expected[token], abs=0.03)


def test_word_nudging_hands_the_word_end_to_the_base_by_hand():
    guide = WordNudgingGuide(Fixed(NUDGE), 0.6, STARTS)
    out = two_tokens(guide)
    check_step(out, 0, NUDGE)  # the base is unsure: the nudging model writes
    # inside the nudged word, the base sure: "b" continues the word with the nudging model's 0.5; the nudging
    # model's word-ending mass 0.2 + 0.3 = 0.5 goes to the base model's next word over {a, c}: 0.1 / 0.8, 0.7 / 0.8
    check_step(out, 1, [0.5 * 0.1 / 0.8, 0.5, 1e-30, 0.5 * 0.7 / 0.8])
    counts = guide.count([d.completion_ids for d in out])
    continued = sum(d.completion_ids[1] == 1 for d in out)
    assert counts == {"nudged_tokens": len(out) + continued, "nudged_words": len(out), "tokens": 2 * len(out)}


def test_token_nudging_on_the_same_models_returns_to_the_base_at_once():
    guide = NudgingGuide(Fixed(NUDGE), 0.6)
    out = two_tokens(guide)
    check_step(out, 0, NUDGE)
    check_step(out, 1, BASE[1])  # one token: the base model's own distribution once it is sure
    assert guide.nudged == len(out)


def test_a_span_of_two_words_keeps_the_nudging_model_across_the_word_boundary():
    guide = WordNudgingGuide(Fixed(NUDGE), 0.6, STARTS, span=2)
    out = two_tokens(guide)
    check_step(out, 1, NUDGE)  # the first word may end: a second nudged word follows
    counts = guide.count([d.completion_ids for d in out])
    new_word = sum(d.completion_ids[1] in (0, 3) for d in out)
    assert counts == {"nudged_tokens": 2 * len(out), "nudged_words": len(out) + new_word, "tokens": 2 * len(out)}


def test_unsure_at_the_word_end_starts_a_new_nudge():
    # the base unsure at both steps: every token is the nudging model's, and each word-starting token a new word
    guide = WordNudgingGuide(Fixed(NUDGE), 0.6, STARTS)
    out = decode(PositionFixed([BASE[0], BASE[0]]), [[0]] * 2000, None, Sampler(seed=6, truncated_logprobs=True), 2, [2], guide=guide)
    check_step(out, 1, NUDGE)
    counts = guide.count([d.completion_ids for d in out])
    assert counts["nudged_tokens"] == 2 * len(out)
    assert counts["nudged_words"] == len(out) + sum(d.completion_ids[1] in (0, 3) for d in out)


def test_word_starts_and_word_counts_on_the_tokenizer(tokenizer):
    starts = word_starts(tokenizer, len(tokenizer) + 3)
    assert starts[len(tokenizer):].all()  # ids beyond the tokenizer
    assert all(starts[i] for i in tokenizer.all_special_ids)
    text = "the soup was superb and the staff were unfriendly ."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert [bool(starts[i]) for i in ids] == [p.startswith("Ġ") for p in pieces]
    assert count_words(ids, starts, set(tokenizer.all_special_ids)) == len(text.split())
    assert count_words(ids + [tokenizer.eos_token_id], starts, set(tokenizer.all_special_ids)) == len(text.split())


def replay(base, nudger, sample, gamma, starts, special, span=1):
    """The word-nudging rule written out per token on the full prefix (no caches): the log-prob of each token
    of ``sample`` under the nudged policy, the nudged tokens and the nudged words (``special`` tokens are no words)."""
    logps, nudged, words, left = [], 0, 0, 0
    ids = list(sample.prompt_ids)
    for token in sample.completion_ids:
        x = torch.tensor([ids])
        with torch.no_grad():
            pb = torch.softmax(base(input_ids=x).logits[0, -1].float(), -1)
            pn = torch.softmax(nudger(input_ids=x).logits[0, -1].float(), -1)
        sure = float(pb.max()) >= gamma
        if left == 0:
            p, by_nudger = (pb[token], False) if sure else (pn[token], True)
            words += int(by_nudger and token not in special)
            left = 0 if sure else span
        elif not starts[token]:
            p, by_nudger = pn[token], True
        elif left > 1 or not sure:
            p, by_nudger = pn[token], True
            words += int(token not in special)
            left = left - 1 if left > 1 else span
        else:
            p, by_nudger = pn[starts].sum() * pb[token] / pb[starts].sum(), False
            left = 0
        nudged += int(by_nudger)
        logps.append(math.log(float(p)))
        ids.append(token)
    return logps, nudged, words


@pytest.mark.parametrize("span", [1, 2])
def test_word_nudging_log_probs_are_the_rule_replayed_on_full_prefixes(trained, small, tokenizer, span):  # noqa: F811
    out = decode_with("nudging", trained, tokenizer, PROMPTS, n=3, nudger=small, gamma=0.5, unit="word", span=span, max_new_tokens=14, seed=4)
    starts = word_starts(tokenizer, trained.get_output_embeddings().weight.shape[0])
    nudged = words = 0
    for s in out.samples:
        logps, n, w = replay(trained, small, s, 0.5, starts, set(tokenizer.all_special_ids), span)
        assert s.logprobs == pytest.approx(logps, abs=1e-4)
        nudged, words = nudged + n, words + w
    stats = out.stats
    assert (stats["nudged_tokens"], stats["nudged_words"]) == (nudged, words)
    assert stats["tokens"] == sum(len(s.completion_ids) for s in out.samples)
    assert 0.0 < stats["nudged_share"] < 1.0 and 0.0 < stats["nudged_word_share"] <= 1.0
    assert out.cost.forwards["nudger"] == out.cost.forwards["policy"]


def test_word_nudging_reductions(trained, small, tokenizer):  # noqa: F811
    plain = generate(trained, tokenizer, PROMPTS, n=2, max_new_tokens=14, seed=4)
    none = decode_with("nudging", trained, tokenizer, PROMPTS, n=2, nudger=small, gamma=0.0, unit="word", max_new_tokens=14, seed=4)
    assert [s.completion_ids for s in none.samples] == [s.completion_ids for s in plain]
    assert none.stats["nudged_share"] == 0.0 and none.stats["nudged_words"] == 0
    nudger_plain = generate(small, tokenizer, PROMPTS, n=2, max_new_tokens=14, seed=4)
    every = decode_with("nudging", trained, tokenizer, PROMPTS, n=2, nudger=small, gamma=1.01, unit="word", max_new_tokens=14, seed=4)
    assert [s.completion_ids for s in every.samples] == [s.completion_ids for s in nudger_plain]
    assert every.stats["nudged_share"] == 1.0 and every.stats["nudged_word_share"] == 1.0
    with pytest.raises(ValueError, match="unit must be one of token, word"):
        decode_with("nudging", trained, tokenizer, PROMPTS, nudger=small, unit="sentence")


def test_word_nudging_from_the_cli(trained, small, tokenizer, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from alignkit.cli import app

    trained.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    small.save_pretrained(tmp_path / "nudger")
    tokenizer.save_pretrained(tmp_path / "nudger")
    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(tmp_path / "base"), "-p", PROMPTS[0], "--n", "2", "--max-new-tokens", "12", "--strategy", "nudging",
                                 "-O", f"nudger={tmp_path / 'nudger'}", "-O", "gamma=0.5", "-O", "unit=word"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stderr.strip().splitlines()[-1])["stats"]
    assert stats["unit"] == "word" and 0.0 <= stats["nudged_word_share"] <= 1.0 and stats["words"] > 0
