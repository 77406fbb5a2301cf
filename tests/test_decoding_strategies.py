"""Inference-time strategies of issue 14 beyond best-of-N / ARGS / products: nudging, activation steering (CAA),
GenARM (the autoregressive reward model and its decoding rule), value-guided decoding (CD-FUDGE / VAS /
Transfer Q*), DeAL-style lookahead search and weak-to-strong beam search.

Their rules on hand-made distributions written out by hand, their reductions to plain decoding, guide caches
in lockstep with recomputation on the full prefix, cost accounting, and the CLI."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import quick_sft

from alignkit.decoding import decode_with
from alignkit.decoding.genarm import genarm_alphas
from alignkit.decoding.guided import ProductGuide
from alignkit.decoding.nudging import NudgingGuide
from alignkit.decoding.search import constraint_scores
from alignkit.decoding.steering import Contrast, Steering, caa_vectors, decoder_layers
from alignkit.decoding.value import ValueGuide, new_value_model, td_lambda_targets
from alignkit.rollout import Guide, Sampler, decode, generate, stop_token_ids
from alignkit.rollout.engine import left_pad
from alignkit.rollout.generate import sample_logprobs
from alignkit.rollout.local import CachedModelGuide
from test_decoding import PROMPTS, pytestmark  # noqa: F401  (the same prompts and one-thread marker)


@pytest.fixture(scope="module")
def trained(tiny_dir, tokenizer):
    return quick_sft(tiny_dir, tokenizer, rows=64, steps=60)


@pytest.fixture(scope="module")
def small(tiny_dir, tokenizer):
    """A second, differently trained model with the same tokenizer (a nudging model, an ARM, a tuned model)."""
    return quick_sft(tiny_dir, tokenizer, rows=16, steps=25)


class Fixed(torch.nn.Module):
    """A hand-made 'model': the same next-token logits after any prefix (no cache needed)."""

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.log(torch.tensor(probs, dtype=torch.float32)), requires_grad=False)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True, logits_to_keep=0, **kw):
        return SimpleNamespace(logits=self.logits.expand(input_ids.shape[0], input_ids.shape[1], -1))


class LastTokenValue(torch.nn.Module):
    """A hand-made value model: V(prefix) = table[last token of the prefix]."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32), requires_grad=False)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True, logits_to_keep=0, **kw):
        return SimpleNamespace(logits=self.table[input_ids][..., None])


def one_token(base, guide, jobs=4000):
    """``jobs`` one-token decodes of ``base`` with ``guide`` from the prompt [0] (token 2 is the stop token)."""
    return decode(base, [[0]] * jobs, None, Sampler(seed=3, truncated_logprobs=True), 1, [2], guide=guide)


def check_distribution(out, expected):
    """Every sample's log-prob is log expected[token]; the token frequencies match expected."""
    for d in out:
        assert d.logprobs[0] == pytest.approx(math.log(expected[d.completion_ids[0]]), abs=1e-5)
    freq = sum(d.completion_ids[0] == 1 for d in out) / len(out)
    assert freq == pytest.approx(expected[1], abs=0.03)


# ---------------------------------------------------------------------------------------------------------
# hand-made distributions (vocabulary {0, 1} + a stop token 2 of probability ~0)
# ---------------------------------------------------------------------------------------------------------
def test_genarm_rule_on_a_two_token_vocabulary_by_hand():
    base, arm = Fixed([0.8, 0.2, 1e-30]), Fixed([0.3, 0.7, 1e-30])
    (alpha,) = genarm_alphas(beta=0.5, weights=1.0, count=1)
    assert alpha == 2.0
    # p(v) ∝ pi_base(v) pi_r(v)^(1/beta): 0.8 * 0.09 = 0.072 and 0.2 * 0.49 = 0.098
    p1 = 0.098 / (0.072 + 0.098)
    check_distribution(one_token(base, ProductGuide([CachedModelGuide(arm, alpha)])), [1 - p1, p1, 1e-30])
    # two ARMs with run-time weights: exponents w_i / beta
    assert genarm_alphas(2.0, [1.0, 0.5], 2) == [0.5, 0.25]
    with pytest.raises(ValueError, match="2 ARMs but 3 weights"):
        genarm_alphas(1.0, [1, 2, 3], 2)


@pytest.mark.parametrize("gamma, nudged", [(0.6, True), (0.5, False)])
def test_nudging_switches_at_gamma_by_hand(gamma, nudged):
    base, nudger = Fixed([0.45, 0.55, 1e-30]), Fixed([0.9, 0.1, 1e-30])  # the base's top-1 probability is 0.55
    guide = NudgingGuide(nudger, gamma)
    out = one_token(base, guide)
    check_distribution(out, [0.9, 0.1, 1e-30] if nudged else [0.45, 0.55, 1e-30])
    assert guide.nudged == (len(out) if nudged else 0) and guide.tokens == len(out)


def test_nudging_span_bookkeeping_by_hand():
    guide = NudgingGuide(Fixed([0.5, 0.5]), gamma=0.7, span=2)
    guide.left = torch.zeros(1, dtype=torch.long)
    sure, unsure = torch.log(torch.tensor([[0.9, 0.1]])), torch.log(torch.tensor([[0.4, 0.6]]))
    # unsure -> the nudging model writes 2 tokens; a sure step after the span is the base model's again
    assert [bool(guide.nudge_mask(x)) for x in (unsure, sure, sure, unsure, unsure, unsure)] == [True, True, False, True, True, True]


def test_value_guided_rule_by_hand():
    base = Fixed([0.5, 0.3, 0.2, 1e-30])  # tokens 0, 1, 2 and the stop token 3
    guide = ValueGuide([LastTokenValue([0.0, 1.0, 5.0, 0.0])], [1.0], k=2, w=1.0)
    out = decode(base, [[0]] * 4000, None, Sampler(seed=1, truncated_logprobs=True), 1, [3], guide=guide)
    # top-2 of the base: tokens 0 and 1; scores log 0.5 + 0 and log 0.3 + 1; token 2 is outside the top-k
    p1 = 0.3 * math.e / (0.5 + 0.3 * math.e)
    for d in out:
        assert d.completion_ids[0] in (0, 1)
        assert d.logprobs[0] == pytest.approx(math.log(p1 if d.completion_ids[0] == 1 else 1 - p1), abs=1e-5)
    assert sum(d.completion_ids[0] == 1 for d in out) / len(out) == pytest.approx(p1, abs=0.03)


def test_td_lambda_targets_by_hand():
    v = torch.tensor([0.1, 0.5, 0.2])
    # G_2 = r = 1; G_1 = 0.5 * 0.2 + 0.5 * 1 = 0.6; G_0 = 0.5 * 0.5 + 0.5 * 0.6 = 0.55
    assert td_lambda_targets(v, 1.0, 0.5).tolist() == pytest.approx([0.55, 0.6, 1.0])
    assert td_lambda_targets(v, 1.0, 1.0).tolist() == pytest.approx([1.0, 1.0, 1.0])  # Monte Carlo (CD-FUDGE)
    assert td_lambda_targets(v, 1.0, 0.0).tolist() == pytest.approx([0.5, 0.2, 1.0])  # TD(0)


def test_constraint_scores_by_hand():
    texts = [" the soup was great and fine .", " the soup was bad"]
    s = constraint_scores(texts, [10, 6], [True, False], ["great", "fine", "tasty"], length=8)
    # 2 of 3 keywords, finished 2 tokens over 8 -> 2/3 - 2/8; 0 keywords, unfinished and under 8 -> 0
    assert s.tolist() == pytest.approx([2 / 3 - 0.25, 0.0])


def test_arm_loss_by_hand():
    from alignkit.algorithms.reward.arm import ARMRewardModelling
    from alignkit.config import load_recipe

    algo = ARMRewardModelling(load_recipe({"algorithm": "reward"}, ["reward.type=arm", "reward.arm_beta=0.5"]))
    logps = torch.tensor([[-1.0, -2.0], [-3.0, -1.0]])  # chosen sum -3, rejected sum -4
    loss, metrics = algo.loss(lambda ids, mask, loss_mask: logps, {"input_ids": None, "attention_mask": None, "loss_mask": None, "index": torch.tensor([0])})
    # r_c - r_r = 0.5 * (-3 - (-4)) = 0.5; loss = -log sigmoid(0.5)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-6)
    assert metrics["accuracy"] == (1.0, 1.0) and metrics["margin"][0] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------
# reductions and caches in lockstep (tiny models)
# ---------------------------------------------------------------------------------------------------------
class RecomputedNudging(Guide):
    """Nudging without a cache: the nudging model re-run on every row's full prefix at every step."""

    def __init__(self, nudger, gamma, pad_id):
        self.nudger, self.gamma, self.pad_id = nudger, gamma, pad_id

    def __call__(self, logits, state):
        ids, mask = left_pad(state.prefixes(), self.pad_id)
        other = self.nudger(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
        use = torch.softmax(logits.float(), -1).max(-1).values < self.gamma
        return torch.where(use[:, None], other, logits)


def test_nudging_reductions_and_cache_in_lockstep(trained, small, tokenizer):
    plain = generate(trained, tokenizer, PROMPTS, n=2, max_new_tokens=14, seed=4)
    none = decode_with("nudging", trained, tokenizer, PROMPTS, n=2, nudger=small, gamma=0.0, max_new_tokens=14, seed=4)
    assert [s.completion_ids for s in none.samples] == [s.completion_ids for s in plain] and none.stats["nudged_share"] == 0.0
    nudger_plain = generate(small, tokenizer, PROMPTS, n=2, max_new_tokens=14, seed=4)
    every = decode_with("nudging", trained, tokenizer, PROMPTS, n=2, nudger=small, gamma=1.01, max_new_tokens=14, seed=4)
    assert [s.completion_ids for s in every.samples] == [s.completion_ids for s in nudger_plain] and every.stats["nudged_share"] == 1.0

    some = decode_with("nudging", trained, tokenizer, PROMPTS, n=2, nudger=small, gamma=0.5, max_new_tokens=14, seed=4)
    ids = [s.prompt_ids for s in some.samples]
    with torch.no_grad():
        ref = decode(trained, ids, None, Sampler(seed=4, truncated_logprobs=True), 14, stop_token_ids(tokenizer),
                     guide=RecomputedNudging(small, 0.5, tokenizer.pad_token_id), pad_id=tokenizer.pad_token_id)
    assert [s.completion_ids for s in some.samples] == [d.completion_ids for d in ref]
    for s, d in zip(some.samples, ref):
        assert s.logprobs == pytest.approx(d.logprobs, abs=1e-4)
    assert 0.0 < some.stats["nudged_share"] < 1.0
    assert some.stats["tokens"] == sum(len(s.completion_ids) for s in some.samples)
    # one forward of one token per step for the nudging model, like the base model's
    assert some.cost.forwards["nudger"] == some.cost.forwards["policy"]
    assert some.cost.tokens_processed["nudger"] == some.cost.tokens_processed["policy"]


def test_genarm_strategy_is_the_product_with_alpha_w_over_beta(trained, small, tokenizer):
    plain = generate(trained, tokenizer, PROMPTS, n=2, max_new_tokens=12, seed=6)
    zero = decode_with("genarm", trained, tokenizer, PROMPTS, n=2, arm=small, weights=0.0, max_new_tokens=12, seed=6)
    assert [s.completion_ids for s in zero.samples] == [s.completion_ids for s in plain]
    g = decode_with("genarm", trained, tokenizer, PROMPTS, n=2, arm=[small, trained], beta=2.0, weights=[1.0, 0.5], max_new_tokens=12, seed=6)
    p = decode_with("product", trained, tokenizer, PROMPTS, n=2, guide=[small, trained], alpha=[0.5, 0.25], max_new_tokens=12, seed=6)
    assert [s.completion_ids for s in g.samples] == [s.completion_ids for s in p.samples]
    assert g.stats["alpha"] == [0.5, 0.25] and set(g.cost.forwards) >= {"policy", "arm0", "arm1"}


class RecomputedValue(Guide):
    """Value-guided decoding without a cache: V(prefix + v) recomputed on the full sequence for every candidate."""

    def __init__(self, value, k, w, pad_id):
        self.value, self.k, self.w, self.pad_id = value, k, w, pad_id

    def __call__(self, logits, state):
        scores, top = logits.float().topk(self.k, dim=-1)
        seqs = [p + [t] for p, cands in zip(state.prefixes(), top.tolist()) for t in cands]
        ids, mask = left_pad(seqs, self.pad_id)
        v = self.value.values(ids, mask)[:, -1].view(-1, self.k)
        return torch.full_like(logits, float("-inf")).scatter(-1, top, scores + self.w * v)


def test_value_guide_cache_in_lockstep_with_recomputation(trained, tokenizer):
    torch.manual_seed(0)
    value = new_value_model(trained)
    torch.nn.init.normal_(value.head.weight, std=1.0)  # a non-trivial value
    value.eval()
    result = decode_with("value_guided", trained, tokenizer, PROMPTS, n=2, value=value, k=4, w=2.0, max_new_tokens=12, seed=8)
    ids = [s.prompt_ids for s in result.samples]
    with torch.no_grad():
        ref = decode(trained, ids, None, Sampler(seed=8, truncated_logprobs=True), 12, stop_token_ids(tokenizer),
                     guide=RecomputedValue(value, 4, 2.0, tokenizer.pad_token_id), pad_id=tokenizer.pad_token_id)
    assert [s.completion_ids for s in result.samples] == [d.completion_ids for d in ref]
    for s, d in zip(result.samples, ref):
        assert s.logprobs == pytest.approx(d.logprobs, abs=1e-4)
    # the value model runs the prompts once (3 unique prompts, left-padded), then k = 4 candidate tokens per
    # active row per step (one forward per step, the policy one fewer: it does not run its last token)
    generated = sum(len(s.completion_ids) for s in result.samples)
    prefill = 3 * max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS)
    assert result.cost.tokens_processed["value"] == prefill + 4 * generated
    assert result.cost.forwards["value"] == result.cost.forwards["policy"] + 1


def test_value_fit_then_decode_raises_the_fitted_reward(trained, tokenizer, tmp_path):
    from alignkit.decoding.value import ValueModel
    from alignkit.rewards.sources import FunctionSource

    great = FunctionSource(lambda prompts, completions: [float("great" in c.split()) for c in completions], name="great")
    plain = decode_with("sample", trained, tokenizer, PROMPTS * 4, n=2, max_new_tokens=16, seed=9)
    guided = decode_with("value_guided", trained, tokenizer, PROMPTS * 4, n=2, reward=great, fit_prompts=48, fit_samples=4, fit_epochs=12,
                         k=8, w=8.0, max_new_tokens=16, seed=9, save=tmp_path / "v")
    rate = lambda d: sum("great" in s.completion.split() for s in d.samples) / len(d.samples)  # noqa: E731
    assert rate(guided) > rate(plain) + 0.3
    assert guided.stats["fit"]["rollouts"] == 48 * 4 and guided.stats["fit"]["mse"][-1] < guided.stats["fit"]["mse"][0]
    assert ValueModel.from_pretrained(tmp_path / "v").meta["lam"] == 1.0


def test_steering_adds_exactly_alpha_v_at_the_layer(trained, tokenizer):
    ids = torch.tensor([tokenizer("review of the soup : the soup was", add_special_tokens=False)["input_ids"]])
    v = torch.randn(trained.config.hidden_size)
    seen = []
    handle = decoder_layers(trained)[0].register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
    hook_after = decoder_layers(trained)[1].register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("hidden_states", a[0] if a else None)),
                                                                      with_kwargs=True)
    try:
        with torch.no_grad():
            trained(input_ids=ids)
            with Steering(trained, v, 0, 3.0):
                trained(input_ids=ids)
            with Steering(trained, v, 0, 3.0, positions="completion"):
                trained(input_ids=ids)
    finally:
        handle.remove()
        hook_after.remove()
    base_out, base_next, _, steered_next, _, last_next = seen
    assert torch.allclose(steered_next - base_next, (3.0 * v).expand_as(base_next), atol=1e-5)
    diff = last_next - base_next
    assert torch.allclose(diff[0, -1], 3.0 * v, atol=1e-5) and torch.allclose(diff[0, :-1], torch.zeros_like(diff[0, :-1]))
    assert torch.equal(base_out, base_next)


def test_caa_vector_by_hand_and_alpha_zero_is_plain(trained, tokenizer):
    contrasts = [Contrast("review of the soup :", " the soup was great .", " the soup was awful ."),
                 Contrast("review of the film :", " the plot was good and the music was superb .", " the plot was bad .")]
    vec = caa_vectors(trained, tokenizer, contrasts, [1])[0]

    def mean_act(prompt, completion):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        got = []
        h = decoder_layers(trained)[1].register_forward_hook(lambda m, a, o: got.append(o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            trained(input_ids=torch.tensor([p + c]))
        h.remove()
        return got[0][0, len(p):].mean(0)

    by_hand = (sum(mean_act(c.prompt, c.positive) for c in contrasts) - sum(mean_act(c.prompt, c.negative) for c in contrasts)) / 2
    assert torch.allclose(vec, by_hand, atol=1e-5)
    plain = generate(trained, tokenizer, PROMPTS, n=2, max_new_tokens=12, seed=2)
    zero = decode_with("steer", trained, tokenizer, PROMPTS, n=2, examples=contrasts, layer=1, alpha=0.0, max_new_tokens=12, seed=2)
    assert [s.completion_ids for s in zero.samples] == [s.completion_ids for s in plain]
    pushed = decode_with("steer", trained, tokenizer, PROMPTS, n=2, examples=contrasts, layer=1, alpha=8.0, max_new_tokens=12, seed=2)
    assert [s.completion_ids for s in pushed.samples] != [s.completion_ids for s in plain]
    # the steered policy's log-probs are its own: with the hook gone they differ from the model's
    assert pushed.exact_logprobs and not torch.allclose(pushed.logps(trained, tokenizer.pad_token_id), sample_logprobs(trained, pushed.samples, tokenizer.pad_token_id))


def greedy(model, tokenizer, n_tokens):
    return generate(model, tokenizer, PROMPTS, n=1, max_new_tokens=n_tokens, greedy=True)


@pytest.mark.parametrize("depth, commit", [(3, 1), (2, 3), (0, 1)])
def test_lookahead_with_one_candidate_is_greedy_decoding(trained, tokenizer, depth, commit):
    # k = 1: a single fork per step, so every roll-back of the cache must land exactly on greedy decoding
    result = decode_with("lookahead", trained, tokenizer, PROMPTS, length=100, k=1, depth=depth, commit=commit, max_new_tokens=14)
    assert [s.completion_ids for s in result.samples] == [s.completion_ids for s in greedy(trained, tokenizer, 14)]


def test_lookahead_keyword_constraint_puts_the_keyword_in(trained, tokenizer):
    result = decode_with("lookahead", trained, tokenizer, PROMPTS, n=1, keywords=["superb"], k=10, depth=3, max_new_tokens=16)
    base = greedy(trained, tokenizer, 16)
    assert sum("superb" in s.completion.split() for s in base) == 0
    assert sum("superb" in s.completion.split() for s in result.samples) == len(PROMPTS)
    assert result.cost.tokens_generated > sum(len(s.completion_ids) for s in result.samples)  # the lookahead forks count


def test_w2s_reduces_to_sampling_and_reports_the_implicit_reward(trained, small, tokenizer):
    plain = generate(trained, tokenizer, PROMPTS, n=2, max_new_tokens=12, seed=3)
    one = decode_with("w2s", trained, tokenizer, PROMPTS, n=2, tuned=small, untuned=trained, beams=1, expand=1, chunk=3, max_new_tokens=12, seed=3)
    assert [s.completion_ids for s in one.samples] == [s.completion_ids for s in plain]
    res = decode_with("w2s", trained, tokenizer, PROMPTS, n=1, tuned=small, untuned=trained, beams=2, expand=3, chunk=3, max_new_tokens=12, seed=3)
    pad = tokenizer.pad_token_id
    implicit = sample_logprobs(small, res.samples, pad) - sample_logprobs(trained, res.samples, pad)
    assert res.rewards == pytest.approx(implicit.tolist(), abs=1e-3)
    assert res.cost.tokens_generated >= 6 * sum(len(s.completion_ids) for s in res.samples) // 2


# ---------------------------------------------------------------------------------------------------------
# GenARM training and the CLI
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(trained, small, tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("strategies")
    for name, model in (("base", trained), ("small", small)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def test_arm_training_and_cli_strategies(saved, tmp_path):
    from typer.testing import CliRunner

    from alignkit.algorithms import train
    from alignkit.cli import app
    from alignkit.config import load_recipe

    arm = train(load_recipe({"algorithm": "reward"}, [f"model.path={saved / 'small'}", "reward.type=arm", "reward.arm_beta=0.5", "task.n_train=64",
                                                      "task.n_eval=0", "train.max_steps=4", "train.batch_size=16", "train.progress=false",
                                                      f"train.output_dir={tmp_path / 'arm'}"]))
    config = json.loads((arm / "config.json").read_text())
    assert config["reward_type"] == "arm" and config["arm_beta"] == 0.5 and config["architectures"][0].endswith("ForCausalLM")
    runner = CliRunner()
    base = str(saved / "base")
    cases = {
        "genarm": [f"arm={arm}", "beta=0.5"],
        "nudging": [f"nudger={saved / 'small'}", "gamma=0.5"],
        "steer": ["layer=1", "alpha=4"],
        "value_guided": ["fit_prompts=8", "fit_samples=2", "fit_epochs=1", "k=4"],
        "lookahead": ["keywords=[great]", "k=2", "depth=2"],
        "w2s": [f"tuned={saved / 'small'}", f"untuned={base}"],
    }
    for strategy, options in cases.items():
        argv = ["generate", base, "-p", "review of the soup :", "--max-new-tokens", "8", "--strategy", strategy]
        result = runner.invoke(app, argv + [x for o in options for x in ("-O", o)])
        assert result.exit_code == 0, (strategy, result.output)
        report = json.loads(result.stderr.strip().splitlines()[-1])
        assert report["strategy"] == strategy and report["cost"]["tokens_generated"] > 0
    result = runner.invoke(app, ["eval", base, "--n-prompts", "4", "--samples", "1", "--strategy", "nudging", "-O", f"nudger={saved / 'small'}",
                                 "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert 0.0 <= data["strategy/nudged_share"] <= 1.0 and data["kl"] is not None and data["cost/forwards/nudger"] > 0
    result = runner.invoke(app, ["generate", base, "-p", "x", "--strategy", "nudging"])
    assert result.exit_code != 0 and "nudger=PATH" in result.output


def test_bench_compares_strategies_without_training(saved, tmp_path):
    from alignkit.pipelines.bench import run_bench

    suite = {"name": "s", "output_dir": str(tmp_path / "b"), "task": {"name": "sentiment"}, "sft": str(saved / "base"),
             "eval": {"prompts": 6, "samples": 1, "max_new_tokens": 10},
             "methods": [{"name": "best-of-N", "strategy": "best_of_n", "options": {"reward": "gold"}, "sweep": [{"N": 1}, {"N": 8}]},
                         {"name": "lookahead", "strategy": "lookahead", "options": {"keywords": ["great"], "k": 2, "depth": 1}}]}
    result = run_bench(suite, quiet=True)
    pts = {p["name"]: p for p in result["points"]}
    one, eight = pts["best-of-N[N=1]"], pts["best-of-N[N=8]"]
    assert eight["cost/reward_sequences"] == 8 * one["cost/reward_sequences"] == 48
    assert eight["gold_reward"] >= one["gold_reward"] and eight["strategy/kl_analytic"] == pytest.approx(math.log(8) - 7 / 8)
    assert pts["lookahead[default]"]["kl"] is None  # a search has no log-probs of its own


def test_an_arm_folder_is_a_reward_source(saved, tmp_path):
    import shutil

    from alignkit.rewards.arm import ArmRewardSource
    from alignkit.rewards.sources import build_reward_source

    arm = tmp_path / "arm"
    shutil.copytree(saved / "small", arm)
    config = json.loads((arm / "config.json").read_text()) | {"reward_type": "arm", "arm_beta": 0.5}
    (arm / "config.json").write_text(json.dumps(config))
    source = build_reward_source(str(arm))  # tests/test_genarm_scales.py checks its numbers by hand
    assert isinstance(source, ArmRewardSource) and source.arm_beta == 0.5
