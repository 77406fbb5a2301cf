"""``reward.type: multi_objective``: an ArmoRM-style model, K attribute regression heads plus a prompt gate,
trained **jointly** in one run on a mix of ratings rows (``prompt``, ``completion``, ``ratings: {attr:
value}`` or one column per attribute) and pair rows (``prompt``, ``chosen``, ``rejected``): the ``ratings``
record kind (:mod:`alignkit.data.kinds`).

A ratings row adds the masked mean squared error of the heads
(:func:`~alignkit.objectives.reward.attribute_regression`); a pair row adds ``reward.gate_weight`` ×
Bradley–Terry on ``r = β Σ_k g_k(x) r_k`` (:func:`~alignkit.objectives.reward.gated_bradley_terry`). With
``reward.gate_detach`` (the default) the BT loss sees the heads' scores as constants, so it trains only the
gate and β, while the heads and the body learn only from ratings: ArmoRM's two stages, run side by side.
"""

from __future__ import annotations

import torch

from ...data.collate import pad
from ...engine.contract import Metrics
from ...objectives.reward import attribute_regression, gated_bradley_terry, gated_reward
from .base import REWARD_TYPES, RowRewardModelling


@REWARD_TYPES.register("multi_objective")
class MultiObjectiveRewardModelling(RowRewardModelling):
    reward_type = "multi_objective"
    row_kind = "ratings"

    def attributes(self) -> list[str]:
        """The attribute names: ``reward.attributes``, or the task's default (``task.reward_attributes``)."""
        if self.cfg.attributes:
            if len(set(self.cfg.attributes)) != len(self.cfg.attributes):
                raise ValueError(f"reward.attributes has a repeated name: {self.cfg.attributes}")
            return list(self.cfg.attributes)
        default = getattr(self.task(), "reward_attributes", None) if self._from_task() else None
        if default:
            return list(default)
        raise ValueError("reward.type=multi_objective on a data file needs reward.attributes (the names of the rated attributes)")

    def kind_options(self):
        return {"attributes": self.attributes()}

    def task_rows(self, task, n, split):
        from ...rewards.task_data import multi_objective_rows

        return multi_objective_rows(task, n, split, self.recipe.task.label_temperature)

    def build_model(self, path, model_config, load_reward_model):
        from ...rewards.models import MultiObjectiveRewardModel, is_multi_objective

        attributes = self.attributes()
        if is_multi_objective(path):
            model = MultiObjectiveRewardModel.from_pretrained(path, model_config)
            if model.attributes != attributes:
                raise ValueError(f"{path} has attributes {model.attributes}, the recipe asks for {attributes}")
            return model
        return MultiObjectiveRewardModel.build(path, model_config, attributes, self.cfg.gate_hidden, seed=self.recipe.train.seed)

    def module(self, model):
        from ...rewards.models import MultiObjectiveForward

        return MultiObjectiveForward(model, detach_prompt=not self.cfg.gate_trains_body)

    # ----------------------------------------------------------------------------------------------
    def collate(self, examples, pad_id):
        k = len(self.attributes())
        seqs, prompt_last = [], []
        rating_seq, ratings, masks, chosen_seq, rejected_seq = [], [], [], [], []
        for e in examples:
            if e["mo"] == "ratings":
                rating_seq.append(len(seqs))
                seqs.append(e["input_ids"])
                prompt_last.append(e["prompt_len"] - 1)
                ratings.append(e["ratings"])
                masks.append(e["rating_mask"])
            else:
                p = e["prompt_ids"]
                chosen_seq.append(len(seqs))
                seqs.append(p + e["chosen_ids"])
                rejected_seq.append(len(seqs))
                seqs.append(p + e["rejected_ids"])
                prompt_last += [len(p) - 1, len(p) - 1]
        long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
        return {
            "input_ids": pad(seqs, pad_id),
            "attention_mask": pad([[1] * len(s) for s in seqs], 0),
            "prompt_last": long(prompt_last),
            "rating_seq": long(rating_seq),
            "ratings": torch.tensor(ratings, dtype=torch.float32).reshape(-1, k),
            "rating_mask": torch.tensor(masks, dtype=torch.float32).reshape(-1, k),
            "chosen_seq": long(chosen_seq),
            "rejected_seq": long(rejected_seq),
            "index": long([e["index"] for e in examples]),
        }

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        scores, gate, scale = policy(batch["input_ids"], batch["attention_mask"], batch["prompt_last"])  # [N, K], [N, K], β
        total = 0.0 * (scores.sum() + gate.sum() + scale)  # every parameter takes part in every step (DDP)
        metrics: Metrics = {}
        attributes = self.attributes()
        ri = batch["rating_seq"]
        if len(ri):
            pred, y, m = scores[ri], batch["ratings"].to(scores.device), batch["rating_mask"].to(scores.device)
            total = total + attribute_regression(pred, y, m).sum()
            with torch.no_grad():
                sq = (pred.detach() - y) ** 2 * m
                for k, a in enumerate(attributes):
                    metrics[f"mse/{a}"] = (float(sq[:, k].sum()), float(m[:, k].sum()))
        ci, rj = batch["chosen_seq"], batch["rejected_seq"]
        if len(ci):
            g = (gate[ci] + gate[rj]) / 2  # the prompt's gate (both rows share the prompt)
            sc, sr = scores[ci], scores[rj]
            if self.cfg.gate_detach:
                sc, sr = sc.detach(), sr.detach()
            total = total + self.cfg.gate_weight * gated_bradley_terry(g, sc, sr, scale).sum()
            with torch.no_grad():
                d = gated_reward(g, sc - sr, scale).detach()
                n = float(len(ci))
                metrics["accuracy"] = (self.accuracy(d), n)
                metrics["scale"] = (float(scale) * n, n)
                for k, a in enumerate(attributes):
                    metrics[f"gate/{a}"] = (float(g[:, k].sum()), n)
        return total, metrics
