"""Text2Grad: the span reward model's loss and token reward by hand, moving token rewards between
tokenisations, per-token rewards through GAE worked out by hand, the rollout placing a token-level source's
rewards on their tokens, and the two recipes end to end."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignkit.algorithms import train
from alignkit.algorithms.rl.batch import Rollout, RolloutBatch
from alignkit.algorithms.rl.estimators import sequence_or_token_rewards
from alignkit.config import load_recipe
from alignkit.objectives import gae, kl_in_reward
from alignkit.objectives.feedback import expected_label, span_cross_entropy
from alignkit.rewards.spans import map_to_offsets, text_offsets

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "feedback" / "text2grad"


def test_span_cross_entropy_and_token_reward_by_hand():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0)], [5.0, 1.0, 1.0]]])
    labels = torch.tensor([[0, 1, -1]])
    # row: -log(1/3) + -log(2/4) + -log(e^5 / (e^5 + 2e))
    by_hand = math.log(3) + math.log(2) + -(5 - math.log(math.exp(5) + 2 * math.e))
    assert span_cross_entropy(logits, labels, torch.ones(1, 3)).item() == pytest.approx(by_hand, rel=1e-6)
    masked = span_cross_entropy(logits, labels, torch.tensor([[1, 0, 0]]))
    assert masked.item() == pytest.approx(math.log(3))  # masked positions never count, whatever their label
    # p_good - p_bad: 0; 1/2 - 1/4 = 1/4; (e - e^5) / (e^5 + 2e)
    reward = expected_label(logits)[0].tolist()
    assert reward == pytest.approx([0.0, 0.25, (math.e - math.exp(5)) / (math.exp(5) + 2 * math.e)], rel=1e-6)
    with pytest.raises(ValueError, match="3 classes"):
        span_cross_entropy(torch.zeros(1, 2, 2), torch.zeros(1, 2), torch.ones(1, 2))


def test_token_rewards_move_to_the_token_holding_their_last_character():
    # reward-model tokens "the"(0,3) " soup"(3,8) " was"(8,12) " bad"(12,16) EOS(16,16)
    source = [(0, 3), (3, 8), (8, 12), (12, 16), (16, 16)]
    values = [0.1, 0.0, 0.2, -0.9, 0.05]
    # policy tokens "the so"(0,6) "up was"(6,12) " ba"(12,15) "d"(15,16) EOS(16,16)
    target = [(0, 6), (6, 12), (12, 15), (15, 16), (16, 16)]
    out = map_to_offsets(values, source, target)
    assert out == pytest.approx([0.1, 0.2, 0.0, -0.9, 0.05])  # "the" ends in token 0; " soup" and " was" in token 1; " bad" in "d"
    assert sum(out) == pytest.approx(sum(values))
    assert map_to_offsets([1.0], [(0, 3)], []) == []


def test_text_offsets_tile_the_decoded_completion(tokenizer):
    text = " the soup was bad ."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    offsets = text_offsets(tokenizer, ids)
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert offsets[-1] == (len(decoded), len(decoded))  # the EOS is an empty range at the end
    assert "".join(decoded[s:e] for s, e in offsets) == decoded and offsets[0][0] == 0


def test_per_token_rewards_enter_gae_by_hand():
    """Three completion tokens (positions 2..4 after a 2-token prompt) with token rewards 0.5, -1, 0.2 and values
    0.1, 0.2, 0.3; gamma 1, lambda 0.5:
        delta_4 = 0.2 - 0.3 = -0.1                 A_4 = -0.1
        delta_3 = -1 + 0.3 - 0.2 = -0.9            A_3 = -0.9 + 0.5 * -0.1 = -0.95
        delta_2 = 0.5 + 0.2 - 0.1 = 0.6            A_2 = 0.6 + 0.5 * -0.95 = 0.125
    returns A + V = 0.225, -0.75, 0.2. The sequence reward (their sum, -0.3, on the last token) gives others."""
    samples = [SimpleNamespace(prompt_ids=[5, 6], completion_ids=[7, 8, 2], prompt="p", completion="c", finished=True)]
    rollout = Rollout([{"prompt": "p", "index": 0}], samples, 1, reward=torch.tensor([-0.3]), raw_reward=torch.tensor([-0.3]),
                      finished=torch.tensor([True]), keep=torch.tensor([True]), own=slice(0, 1), token_rewards=[torch.tensor([0.5, -1.0, 0.2])])
    batch = RolloutBatch.from_samples(rollout, [0], None, 0)
    assert batch.token_level and batch.token_reward.tolist() == [pytest.approx([0, 0, 0.5, -1.0, 0.2])]
    cfg = SimpleNamespace(env=None)
    zeros = torch.zeros_like(batch.token_reward)
    rewards = kl_in_reward(sequence_or_token_rewards(cfg, batch), zeros, zeros, batch.completion_mask.float(), 0.0)  # as PPO builds them
    values = torch.tensor([[0.0, 0.0, 0.1, 0.2, 0.3]])
    mask = batch.completion_mask.float()
    adv, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert adv[0, 2:].tolist() == pytest.approx([0.125, -0.95, -0.1])
    assert returns[0, 2:].tolist() == pytest.approx([0.225, -0.75, 0.2])
    assert adv[0, :2].tolist() == [0.0, 0.0]
    # without the source's token rewards the same batch is sequence-level: -0.3 on the last token only
    plain = RolloutBatch.from_samples(Rollout(rollout.examples, samples, 1, rollout.reward, rollout.raw_reward, rollout.finished, rollout.keep,
                                              rollout.own), [0], None, 0)
    seq_adv, _ = gae(kl_in_reward(sequence_or_token_rewards(cfg, plain), zeros, zeros, mask, 0.0), values, mask, gamma=1.0, lam=0.5)
    assert not plain.token_level and seq_adv[0, 4].item() == pytest.approx(-0.3 - 0.3)
    assert seq_adv[0, 2].item() != pytest.approx(0.125)
    # the flag survives the subsets the pipeline takes
    assert batch.subset(torch.tensor([True])).token_level


@pytest.fixture(scope="module")
def span_rm(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("t2g") / "rm"
    recipe = load_recipe(RECIPES / "reward.yaml", [f"model.path={tiny_dir}", f"train.output_dir={out}", "train.max_steps=40", "train.batch_size=16",
                                                   "task.n_train=256", "task.n_eval=64", "train.lr=5e-3", "train.progress=false", "train.eval_every=40"])
    return train(recipe), out


def test_the_span_reward_model_learns_the_spans_and_scores_tokens(span_rm, tokenizer):
    import json

    from alignkit.rewards.sources import build_reward_source
    from alignkit.rewards.spans import SpanRewardSource

    final, out = span_rm
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["eval/token_accuracy"] > 0.9  # most tokens are neutral; span tokens below
    assert summary["eval"]["eval/span_token_accuracy"] > 0.5
    source = build_reward_source(str(final))
    assert isinstance(source, SpanRewardSource) and source.token_level
    p = "review of the soup :"
    good, bad = " the soup was great .", " the soup was awful ."
    per = source.score_tokens([p, p], [good, bad])
    assert source.score([p, p], [good, bad]).tolist() == pytest.approx([float(t.sum()) for t in per], abs=1e-5)
    assert float(per[0].sum()) > float(per[1].sum())  # the adjective's token carries the reward
    ids = tokenizer(bad, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    on_policy = source.score_tokens([p], [bad], offsets=[text_offsets(tokenizer, ids)])[0]
    assert on_policy.numel() == len(ids) and float(on_policy.sum()) == pytest.approx(float(per[1].sum()), abs=1e-5)
    assert int(on_policy.argmin()) == len(ids) - 3  # " awful" is the most negative token (before " ." and EOS)
    flat = build_reward_source({"type": "spans", "path": str(final), "token_level": False})
    assert not flat.token_level


def test_token_level_ppo_recipe_runs_and_refuses_sequence_transforms(span_rm, tiny_dir, tmp_path):
    final, _ = span_rm
    common = [f"model.path={tiny_dir}", f"rl.reward={final}", "train.max_steps=2", "train.batch_size=4", "task.n_train=8", "task.n_eval=0",
              "rl.sampling.max_new_tokens=8", "train.progress=false", "train.eval_every=null"]
    out = train(load_recipe(RECIPES / "ppo.yaml", [*common, f"train.output_dir={tmp_path / 'ppo'}"]))
    assert (out / "model.safetensors").exists()
    with pytest.raises(ValueError, match="token-level reward source"):
        train(load_recipe(RECIPES / "ppo.yaml", [*common, f"train.output_dir={tmp_path / 'bad'}", "rl.reward_transforms=[{name: clip, low: -1, high: 1}]"]))
