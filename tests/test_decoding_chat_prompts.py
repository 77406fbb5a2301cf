"""Reward-using strategies on chat prompts (what ``alignkit generate`` passes for a model with a chat template,
e.g. SmolLM2): a built-in task's gold reward reads the last user message, not the message list."""

from __future__ import annotations

import torch

from alignkit.decoding import decode_with
from alignkit.decoding.base import Cost, CountingSource, user_text
from alignkit.tasks import get_task
from test_decoding import pytestmark  # noqa: F401  (the one-thread marker)
from test_decoding_strategies import trained  # noqa: F401  (a module fixture: a tiny SFT model)


def test_user_text():
    chat = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "review of the soup :"}]
    assert user_text(chat) == "review of the soup :"
    assert user_text("review of the soup :") == "review of the soup :" and user_text([1, 2]) == [1, 2]


def test_gold_on_chat_prompts_scores_the_user_text():
    from alignkit.rewards.sources import build_reward_source

    cost = Cost()
    source = CountingSource(build_reward_source("gold"), cost)
    chat = [[{"role": "user", "content": "review of the soup :"}]] * 2
    completions = [" the soup was superb .", " the soup was awful ."]
    expected = get_task("sentiment").gold_rewards(["review of the soup :"] * 2, completions)
    assert source.score(chat, completions).tolist() == expected == [1.0, -1.0]
    assert (cost.reward_calls, cost.reward_sequences) == (1, 2)


def test_best_of_n_and_args_run_on_chat_prompts(trained, tokenizer):  # noqa: F811
    chat = [[{"role": "user", "content": "review of the soup :"}]]
    bon = decode_with("best_of_n", trained, tokenizer, chat, N=4, reward="gold", kl_samples=4, max_new_tokens=10, seed=1)
    task = get_task("sentiment")
    rewards = task.gold_rewards(["review of the soup :"], [bon.samples[0].completion])
    assert bon.stats["reward_selected"] == rewards[0] and bon.samples[0].prompt == chat[0] and "kl_sampled" in bon.stats
    assert bon.cost.reward_calls == 1  # the KL estimate's pool is scored apart from the cost
    out = decode_with("args", trained, tokenizer, chat, k=3, reward="gold", max_new_tokens=6, seed=1)
    assert out.cost.reward_sequences == 3 * len(out.samples[0].completion_ids) and torch.isfinite(torch.tensor(out.samples[0].logprobs)).all()
