"""Inference-time alignment strategies (alignkit.decoding): best-of-N, rejection sampling, ARGS, products of
experts; their maths on hand-made numbers, their equality with plain decoding where they must reduce to it,
their cost accounting, and the policy = model + strategy from Python, `alignkit generate` and `alignkit eval`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import quick_sft

from alignkit.decoding import (
    acceptance_probabilities,
    acceptance_uniforms,
    best_of_n_kl,
    best_of_n_log_ratio,
    decode_with,
    parse_options,
    strategy_names,
)
from alignkit.rewards.sources import FunctionSource
from alignkit.rollout import Guide, Sampler, decode, generate, stop_token_ids
from alignkit.rollout.engine import left_pad

PROMPTS = ["review of the soup :", "review of the phone : the screen was", "review of the film :"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tiny_dir, tokenizer):
    """The session's tiny model after a few SFT steps on the sentiment task (it writes the task's language)."""
    return quick_sft(tiny_dir, tokenizer, rows=64, steps=60)


@pytest.fixture(scope="module")
def guide_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()


def count_word(word):
    """A reward source: how often ``word`` occurs in the completion."""
    return FunctionSource(lambda prompts, completions: [c.split().count(word) for c in completions], name=f"count:{word}")


LENGTH = FunctionSource(lambda prompts, completions: [float(len(c)) for c in completions], name="length")


# ---------------------------------------------------------------------------------------------------------
# best-of-N
# ---------------------------------------------------------------------------------------------------------
def test_best_of_n_kl_formula_by_hand():
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 3 / 4)
    assert best_of_n_kl(4) == pytest.approx(0.6363, abs=1e-4)
    assert best_of_n_kl(1) == 0.0


def test_best_of_n_log_ratio_by_hand_and_on_continuous_rewards():
    # two reward levels, pool {0, 0, 1} plus the selected sample itself: F(1) = 1, F(1-) = 2/4 -> (1 - 0.5^2) / 0.5 = 1.5
    ratio = best_of_n_log_ratio(torch.tensor([1.0]), torch.tensor([[0.0, 0.0, 1.0]]), 2)
    assert float(ratio) == pytest.approx(math.log(1.5))
    # continuous rewards: the estimate approaches the analytic log N - (N-1)/N
    g = torch.Generator().manual_seed(0)
    selected = torch.rand(4000, 4, generator=g).max(-1).values
    est = best_of_n_log_ratio(selected, torch.rand(4000, 256, generator=g), 4).mean()
    assert float(est) == pytest.approx(best_of_n_kl(4), abs=0.03)


def test_best_of_n_keeps_the_best_of_exactly_the_plain_samples(trained, tokenizer):
    N = 4
    plain = generate(trained, tokenizer, PROMPTS, n=N, max_new_tokens=12, seed=3)
    rewards = LENGTH.score([s.prompt for s in plain], [s.completion for s in plain]).view(len(PROMPTS), N)
    result = decode_with("best_of_n", trained, tokenizer, PROMPTS, N=N, reward=LENGTH, max_new_tokens=12, seed=3)
    assert [s.completion_ids for s in result.samples] == [plain[i * N + int(b)].completion_ids for i, b in enumerate(rewards.argmax(-1))]
    assert result.rewards == rewards.max(-1).values.tolist()
    assert result.stats["kl_analytic"] == pytest.approx(best_of_n_kl(N))
    assert result.cost.reward_calls == 1 and result.cost.reward_sequences == len(PROMPTS) * N
    assert result.cost.tokens_generated == sum(len(s.completion_ids) for s in plain)
    assert result.cost.forwards["policy"] >= 1 and result.cost.wall_s > 0
    # n outputs per prompt: output j of prompt i is the best of jobs (i*n + j)*N .. +N-1 of plain sampling
    two = decode_with("best_of_n", trained, tokenizer, PROMPTS, n=2, N=2, reward=LENGTH, max_new_tokens=12, seed=3)
    groups = rewards.view(len(PROMPTS) * 2, 2)
    assert [s.completion_ids for s in two.samples] == [plain[g * 2 + int(b)].completion_ids for g, b in enumerate(groups.argmax(-1))]


def test_best_of_n_sampled_kl_is_reported(trained, tokenizer):
    result = decode_with("best_of_n", trained, tokenizer, PROMPTS, N=4, reward=LENGTH, kl_samples=8, max_new_tokens=12)
    assert 0.0 <= result.stats["kl_sampled"] <= math.log(4) + 1e-6 and "kl_sampled_se" in result.stats
    assert len(result.log_ratio) == len(PROMPTS)
    assert result.cost.reward_sequences == len(PROMPTS) * 4  # the estimate's pool is not the strategy's cost


def test_best_of_8_with_gold_reward_raises_gold_on_sentiment(trained, tokenizer):
    from alignkit.tasks import get_task

    task = get_task("sentiment")
    prompts = task.prompts(16, "test")
    gold = {}
    for N in (1, 8):
        result = decode_with("best_of_n", trained, tokenizer, prompts, N=N, reward="gold:sentiment", max_new_tokens=32)
        gold[N] = sum(task.gold_rewards([s.prompt for s in result.samples], [s.completion for s in result.samples])) / len(prompts)
    assert gold[8] > gold[1] + 0.2, gold


# ---------------------------------------------------------------------------------------------------------
# rejection sampling
# ---------------------------------------------------------------------------------------------------------
def test_acceptance_rule_by_hand_and_in_frequency():
    probs = acceptance_probabilities(torch.tensor([[0.0, 1.0, 0.5]]), beta=0.5)
    assert probs.tolist()[0] == pytest.approx([math.exp(-2.0), 1.0, math.exp(-1.0)])
    u = acceptance_uniforms(0, list(range(20000)))
    assert float((u < 0.3).float().mean()) == pytest.approx(0.3, abs=0.01)
    assert torch.equal(u[:5], acceptance_uniforms(0, list(range(5))))  # batch-independent


def test_rejection_sampling_follows_the_rule(trained, tokenizer):
    N, beta = 6, 2.0
    plain = generate(trained, tokenizer, PROMPTS, n=N, max_new_tokens=12, seed=1)
    rewards = LENGTH.score([s.prompt for s in plain], [s.completion for s in plain]).view(len(PROMPTS), N)
    accepted = acceptance_uniforms(1, list(range(len(plain)))).view_as(rewards) < torch.exp((rewards - rewards.max(-1, keepdim=True).values) / beta)
    result = decode_with("rejection", trained, tokenizer, PROMPTS, N=N, beta=beta, reward=LENGTH, max_new_tokens=12, seed=1)
    assert result.stats["acceptance_rate"] == pytest.approx(float(accepted.float().mean()))
    first = accepted.int().argmax(-1)
    assert [s.completion_ids for s in result.samples] == [plain[i * N + int(f)].completion_ids for i, f in enumerate(first)]
    assert 0 < result.stats["acceptance_rate"] <= 1


# ---------------------------------------------------------------------------------------------------------
# ARGS
# ---------------------------------------------------------------------------------------------------------
def test_args_with_zero_weight_and_greedy_is_greedy_decoding(trained, tokenizer):
    greedy = generate(trained, tokenizer, PROMPTS, max_new_tokens=12, greedy=True)
    result = decode_with("args", trained, tokenizer, PROMPTS, reward=LENGTH, k=5, w=0.0, greedy=True, max_new_tokens=12)
    assert [s.completion_ids for s in result.samples] == [s.completion_ids for s in greedy]
    tokens = sum(len(s.completion_ids) for s in result.samples)
    assert result.cost.reward_sequences == 5 * tokens and result.cost.reward_calls == max(len(s.completion_ids) for s in result.samples)


def test_args_reward_makes_the_favoured_word_more_frequent(trained, tokenizer):
    def frequency(w):
        result = decode_with("args", trained, tokenizer, PROMPTS, n=8, reward=count_word("great"), k=10, w=w, max_new_tokens=16, seed=0)
        return sum(s.completion.split().count("great") for s in result.samples)

    base, guided = frequency(0.0), frequency(5.0)
    assert guided > base + 4, (base, guided)


def test_args_logprobs_are_of_the_guided_distribution(trained, tokenizer):
    # sampling over k = 1 candidate is greedy decoding with probability 1 per token
    greedy = generate(trained, tokenizer, PROMPTS, max_new_tokens=8, greedy=True)
    result = decode_with("args", trained, tokenizer, PROMPTS, reward=LENGTH, k=1, w=3.0, max_new_tokens=8)
    assert result.exact_logprobs and [s.completion_ids for s in result.samples] == [s.completion_ids for s in greedy]
    assert all(lp == pytest.approx(0.0, abs=1e-6) for s in result.samples for lp in s.logprobs)


# ---------------------------------------------------------------------------------------------------------
# products of experts
# ---------------------------------------------------------------------------------------------------------
def test_product_with_zero_alpha_is_plain_sampling(trained, guide_model, tokenizer):
    plain = generate(trained, tokenizer, PROMPTS, n=3, max_new_tokens=16, seed=5)
    result = decode_with("product", trained, tokenizer, PROMPTS, n=3, guide=guide_model, alpha=0.0, max_new_tokens=16, seed=5)
    assert [s.completion_ids for s in result.samples] == [s.completion_ids for s in plain]
    assert result.cost.forwards["guide"] == result.cost.forwards["policy"]


class RecomputedProduct(Guide):
    """The product of experts without a cache: every guide re-run on every row's full prefix at every step."""

    def __init__(self, models, alphas, pad_id):
        self.models, self.alphas, self.pad_id = models, alphas, pad_id

    def __call__(self, logits, state):
        ids, mask = left_pad(state.prefixes(), self.pad_id)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        for model, alpha in zip(self.models, self.alphas):
            guide_logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            logits = logits + alpha * torch.log_softmax(guide_logits.float(), -1)
        return logits


def test_product_with_cached_guides_equals_recomputing_them(trained, guide_model, tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    second = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        for p in second.parameters():
            p.add_(0.05 * torch.randn_like(p))
    alphas = [0.8, 0.5]
    result = decode_with("product", trained, tokenizer, PROMPTS, n=2, guide=[guide_model, second], alpha=alphas, max_new_tokens=16, seed=2)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS for _ in range(2)]
    assert ids == [s.prompt_ids for s in result.samples]
    with torch.no_grad():
        reference = decode(trained, ids, None, Sampler(seed=2, truncated_logprobs=True), 16, stop_token_ids(tokenizer),
                           guide=RecomputedProduct([guide_model, second], alphas, tokenizer.pad_token_id), pad_id=tokenizer.pad_token_id)
    assert [s.completion_ids for s in result.samples] == [d.completion_ids for d in reference]
    for s, d in zip(result.samples, reference):
        assert s.logprobs == pytest.approx(d.logprobs, abs=1e-4)
    assert set(result.cost.forwards) == {"policy", "guide0", "guide1"}


# ---------------------------------------------------------------------------------------------------------
# policy = model + strategy: Python, evaluation, CLI
# ---------------------------------------------------------------------------------------------------------
def test_errors_name_the_allowed_strategies_and_options(trained, tokenizer):
    assert {"sample", "best_of_n", "rejection", "args", "product"} <= set(strategy_names())
    with pytest.raises(ValueError, match="did you mean 'best_of_n'"):
        decode_with("best_of_m", trained, tokenizer, PROMPTS)
    with pytest.raises(ValueError, match="accepted parameters: N, reward, kl_samples"):
        decode_with("best_of_n", trained, tokenizer, PROMPTS, K=3)
    assert parse_options(["N=8", "reward=gold", "alpha=[0.5, 1]", "w=1.5"]) == {"N": 8, "reward": "gold", "alpha": [0.5, 1], "w": 1.5}


def test_evaluate_policy_with_a_strategy(trained, guide_model, tokenizer):
    from alignkit.evaluation.policy import evaluate_policy
    from alignkit.tasks import get_task

    task = get_task("sentiment")
    prompts = task.prompts(4, "test")
    plain = evaluate_policy("m", trained, tokenizer, task, prompts, reference=trained, max_new_tokens=16)
    assert plain.strategy is None and plain.cost is None and plain.kl == pytest.approx(0.0, abs=1e-5)
    # alpha = 0: the strategy's policy is the model, so its KL to the model is 0 (its own guided log-probs)
    same = evaluate_policy("m", trained, tokenizer, task, prompts, max_new_tokens=16, strategy="product", strategy_options={"guide": guide_model, "alpha": 0.0})
    assert same.kl == pytest.approx(0.0, abs=1e-4) and same.gold_reward == pytest.approx(plain.gold_reward)
    assert same.cost["cost/forwards/guide"] > 0
    bon = evaluate_policy("m", trained, tokenizer, task, prompts, max_new_tokens=16, strategy="best_of_n", strategy_options={"N": 4})
    assert bon.kl is not None and bon.strategy_stats["kl_samples"] == 16 and bon.cost["cost/reward_sequences"] == 16


@pytest.fixture(scope="module")
def saved(trained, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("decoding") / "model"
    trained.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_cli_generate_and_eval_with_a_strategy(saved, tmp_path):
    from typer.testing import CliRunner

    from alignkit.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(saved), "-p", "review of the soup :", "--n", "2", "--max-new-tokens", "12", "--strategy", "best_of_n",
                                 "--strategy-option", "N=4", "--strategy-option", "reward=gold"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(lines) == 2 and all("reward" in row for row in lines)
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report["strategy"] == "best_of_n" and report["cost"]["reward_sequences"] == 8
    for strategy, options in (("args", ["k=4", "w=2"]), ("product", [f"guide={saved}", "alpha=0.5"]), ("rejection", ["N=3", "beta=0.5"])):
        argv = ["generate", str(saved), "-p", "review of the soup :", "--max-new-tokens", "8", "--strategy", strategy]
        result = runner.invoke(app, argv + [x for o in options for x in ("-O", o)])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["generate", str(saved), "-p", "x", "--strategy", "best_of_n", "-O", "M=3"])
    assert result.exit_code == 2 and "accepted parameters" in result.output
    result = runner.invoke(app, ["eval", str(saved), "--n-prompts", "4", "--samples", "1", "--strategy", "best_of_n", "-O", "N=2", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert data["strategy"] == "best_of_n" and data["kl"] is not None and data["cost/reward_sequences"] == 8
    assert data["strategy/kl_analytic"] == pytest.approx(best_of_n_kl(2))
