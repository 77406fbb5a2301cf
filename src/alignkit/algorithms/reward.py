"""Reward-model training (``algorithm: reward``).

The model is an ``AutoModelForSequenceClassification`` (``num_labels=1``) built from the causal LM
checkpoint; it scores the last non-pad token (the completion's EOS) of ``prompt + completion``.

``reward.type``:

* ``scalar`` (default): Bradley–Terry on pairs, ``−log σ(r_c − r_r − m)`` (``reward.loss: hinge`` for the
  hinge variant), with the pair's ``margin`` field when ``reward.margin`` is on (times
  ``reward.margin_scale``), plus reward centring ``reward.centering · (r_c + r_r)²``. On ranked data
  (``data.kind: ranked``) every ordered pair of the list with different scores is a BT pair (the list's
  loss is the mean over them) and ``reward.regression`` weighs a squared error to the scores (ratings).
* ``reward.ensemble: K`` trains K members side by side in one run: each member's score head starts from
  its own seed (``reward.ensemble_init: all`` re-draws every weight with the member's seed, for an
  untrained starting checkpoint such as the tiny models), and with ``reward.bootstrap`` each member weighs every training pair by its own Poisson(1)
  count (the online bootstrap, fixed per (member, pair)). Saved as an ensemble folder (``ensemble.json``
  plus ``member-k/``, each a standard ``save_pretrained`` folder).
* ``preference``: a PairRM-style pairwise model: one input holds both responses, and the logit is made
  antisymmetric, ``ℓ = (f(c, r) − f(r, c)) / 2``; loss ``−log σ(ℓ)``. Its ``config.json`` carries
  ``reward_type: preference``.

* ``multi_objective``: an ArmoRM-style model, K attribute regression heads plus a prompt gate, trained
  **jointly** in one run on a mix of ratings rows (``prompt``, ``completion``, ``ratings: {attr: value}``
  or one column per attribute) and pair rows (``prompt``, ``chosen``, ``rejected``). A ratings row adds
  the masked mean squared error of the heads (:func:`~alignkit.objectives.reward.attribute_regression`);
  a pair row adds ``reward.gate_weight`` × Bradley–Terry on ``r = β Σ_k g_k(x) r_k``
  (:func:`~alignkit.objectives.reward.gated_bradley_terry`). With ``reward.gate_detach`` (the default)
  the BT loss sees the heads' scores and the prompt representation as constants, so it trains only the
  gate and β, while the heads and the body learn only from ratings: ArmoRM's two stages, run side by side.
* ``process``: a process reward model (token classifier) trained with per-step BCE
  (:func:`~alignkit.objectives.reward.process`) on rows ``prompt``, ``steps`` (or a ``completion`` cut
  by ``reward.step_split``), ``labels`` (one 0/1 per step), reading the logit at each step's last token.

The last two read rows of the ``prompt`` kind, which carries every extra field, and encode them here in
:meth:`RewardModelling.setup`; with no ``data.train`` they are generated from the sentiment task
(:mod:`alignkit.rewards.task_data`).

Logged: ``accuracy``, ``margin`` (mean r_c − r_r), ``chosen``/``rejected`` mean rewards, and for an
ensemble ``ensemble_std`` (mean std over members). Multi-objective: ``mse/<attribute>``, ``accuracy``
(pairs, by the gated reward), ``gate/<attribute>`` (mean gate weight on pair rows) and ``scale`` (β).
Process: ``step_accuracy`` (logit > 0 against label > 0.5), ``steps`` per row.
"""

from __future__ import annotations

import torch

from ..data.collate import collate_pairs, pad
from ..objectives.reward import attribute_regression, centering, gated_bradley_terry, gated_reward, regression, reward_loss
from ..data.records import number_field
from .base import Algorithm, Metrics

ROW_TYPES = ("multi_objective", "process")  # reward types that read prompt-kind rows with extra fields


class RewardModelling(Algorithm):
    name = "reward"
    data_kind = "pair"

    def __init__(self, recipe):
        super().__init__(recipe)
        self.cfg = recipe.reward
        self.data_kind = "ranked" if recipe.data.kind == "ranked" else "pair"
        if self.cfg.type == "preference" and (self.data_kind != "pair" or self.cfg.ensemble > 1):
            raise ValueError("reward.type=preference trains on pairs (data.kind pair/auto) and without reward.ensemble")
        if self.cfg.type in ROW_TYPES:
            if recipe.data.kind not in ("auto", "prompt"):
                raise ValueError(f"reward.type={self.cfg.type} reads its own rows (data.kind auto or prompt), not data.kind={recipe.data.kind}")
            if self.cfg.ensemble > 1:
                raise ValueError(f"reward.type={self.cfg.type} is trained without reward.ensemble")
            self.data_kind = "prompt"
        self.markers: tuple[list[int], list[int]] | None = None
        self.boot: torch.Tensor | None = None

    def _from_task(self) -> bool:
        return self.recipe.data.train is None

    def attributes(self) -> list[str]:
        """The multi-objective model's attribute names (``reward.attributes``, or the sentiment task's)."""
        from ..rewards.task_data import SENTIMENT_ATTRIBUTES

        if self.cfg.attributes:
            if len(set(self.cfg.attributes)) != len(self.cfg.attributes):
                raise ValueError(f"reward.attributes has a repeated name: {self.cfg.attributes}")
            return list(self.cfg.attributes)
        if self._from_task() and self.recipe.task.name == "sentiment":
            return list(SENTIMENT_ATTRIBUTES)
        raise ValueError("reward.type=multi_objective on a data file needs reward.attributes (the names of the rated attributes)")

    def step_split(self) -> str:
        from ..rewards.models import DEFAULT_STEP_SPLIT
        from ..rewards.task_data import SENTIMENT_STEP_SPLIT

        if self.cfg.step_split is not None:
            return self.cfg.step_split
        return SENTIMENT_STEP_SPLIT if self._from_task() and self.recipe.task.name == "sentiment" else DEFAULT_STEP_SPLIT

    # ----------------------------------------------------------------------------------------------
    def load_model(self, path, model_config, adapter=None):
        from ..rewards.models import RewardEnsemble, is_ensemble, load_reward_model

        if model_config.lora is not None or adapter is not None:
            raise ValueError("reward models are trained with full weights here (model.lora is not supported for algorithm: reward)")
        if is_ensemble(path):
            return RewardEnsemble.from_pretrained(path, model_config)
        seed = self.recipe.train.seed
        if self.cfg.type == "multi_objective":
            from ..rewards.models import MultiObjectiveRewardModel, is_multi_objective

            attributes = self.attributes()
            if is_multi_objective(path):
                model = MultiObjectiveRewardModel.from_pretrained(path, model_config)
                if model.attributes != attributes:
                    raise ValueError(f"{path} has attributes {model.attributes}, the recipe asks for {attributes}")
                return model
            return MultiObjectiveRewardModel.build(path, model_config, attributes, self.cfg.gate_hidden, seed=seed)
        if self.cfg.type == "process":
            model = load_reward_model(path, model_config, seed=seed, token_level=True)
            model.config.reward_type = "process"
            model.config.step_split = self.step_split()
            model.config.step_aggregate = self.cfg.step_aggregate
            return model
        if self.cfg.ensemble > 1:
            return RewardEnsemble([load_reward_model(path, model_config, seed=seed + 1000 * k, reinit=self.cfg.ensemble_init) for k in range(self.cfg.ensemble)])
        model = load_reward_model(path, model_config, seed=seed)
        model.config.reward_type = self.cfg.type
        return model

    def module(self, model):
        from ..rewards.models import MultiObjectiveForward, ProcessForward, RewardForward

        if self.cfg.type == "multi_objective":
            return MultiObjectiveForward(model, detach_prompt=not self.cfg.gate_trains_body)
        if self.cfg.type == "process":
            return ProcessForward(model)
        return RewardForward(model)

    def setup(self, trainer) -> None:
        tok = trainer.tokenizer
        if self.cfg.type in ROW_TYPES:
            self._prepare_examples(trainer)
        if self.cfg.type == "preference":
            from ..rewards.models import PAIR_MARKERS

            self.markers = tuple(tok(m, add_special_tokens=False)["input_ids"] for m in PAIR_MARKERS)  # type: ignore[assignment]
        k = self.cfg.ensemble
        if k > 1 and self.cfg.bootstrap:
            g = torch.Generator().manual_seed(self.recipe.train.seed + 7919)
            n = len(trainer.train_examples)
            self.boot = torch.poisson(torch.ones(k, n), generator=g)

    # ----------------------------------------------------------------------------------------------
    # ----------------------------------------------------------------------------------------------
    # multi-objective and process rows: checked and encoded here (they travel as prompt-kind rows)
    # ----------------------------------------------------------------------------------------------
    def _prepare_examples(self, trainer) -> None:
        """Encode the trainer's prompt-kind examples in place (generating them from the task first when
        there is no data file)."""
        from ..data.encode import Encoder
        from ..tasks import get_task

        data = self.recipe.data
        for split, examples, source in (("train", trainer.train_examples, data.train), ("eval", trainer.eval_examples, data.eval)):
            if not examples:
                continue
            name = source or f"<task {self.recipe.task.name}:{split}>"
            if source is None:
                self._attach_task_rows(get_task(self.recipe.task), examples, split)
            encoder = Encoder(trainer.tokenizer, data.max_length, data.truncation, source=name)
            for e in examples:
                e.update(self.prepare_row(e, encoder, name))

    def _attach_task_rows(self, task, examples: list[dict], split: str) -> None:
        from ..rewards.task_data import multi_objective_rows, process_rows

        if self.cfg.type == "multi_objective":
            rows = multi_objective_rows(task, len(examples), split, self.recipe.task.label_temperature)
        else:
            rows = process_rows(task, len(examples), split)
        for e, row in zip(examples, rows, strict=True):
            if e["prompt"] != row["prompt"]:
                raise RuntimeError("generated task rows do not line up with the trainer's prompts")
            e.update(row)

    def prepare_row(self, e: dict, encoder, source: str) -> dict:
        """The fields :meth:`collate` needs for one checked row (a :class:`DataError` names the problem)."""
        if self.cfg.type == "multi_objective":
            return self._prepare_multi_objective(e, encoder, source)
        return self._prepare_process(e, encoder, source)

    def _prepare_multi_objective(self, e: dict, encoder, source: str) -> dict:
        from ..data.records import DataError, check_row

        row = e.get("row", e.get("_row", 0))
        is_pair, is_rating = "chosen" in e or "rejected" in e, "completion" in e
        if is_pair and is_rating:
            raise DataError(source, row, None, "a row is a ratings row (completion + ratings) or a pair row (chosen + rejected), not both")
        if is_pair:
            record = check_row(e, "pair", source, row) | {"_row": row}
            out = encoder.encode(record, "pair")
            return {"mo": "pair", "prompt_ids": out["prompt_ids"], "chosen_ids": out["chosen_ids"], "rejected_ids": out["rejected_ids"]}
        if not is_rating:
            raise DataError(source, row, None, "expected a ratings row (completion + ratings) or a pair row (chosen + rejected)")
        attributes = self.attributes()
        ratings = e.get("ratings")
        if ratings is None:
            ratings = {a: e[a] for a in attributes if a in e}  # one column per attribute
        if not isinstance(ratings, dict):
            raise DataError(source, row, "ratings", f"expected a mapping {{attribute: value}}, got {type(ratings).__name__}")
        unknown = sorted(set(ratings) - set(attributes))
        if unknown:
            raise DataError(source, row, "ratings", f"unknown attribute(s) {', '.join(unknown)}; reward.attributes: {', '.join(attributes)}")
        values, mask = [], []
        for a in attributes:
            v = ratings.get(a)
            values.append(0.0 if v is None else number_field(v, source, row, f"ratings.{a}"))
            mask.append(0.0 if v is None else 1.0)
        if not any(mask):
            raise DataError(source, row, "ratings", f"no rating for any attribute ({', '.join(attributes)})")
        record = check_row({"prompt": e["prompt"], "completion": e["completion"]}, "sft", source, row) | {"_row": row}
        out = encoder.encode(record, "sft")
        return {"mo": "ratings", "input_ids": out["input_ids"], "prompt_len": len(out["prompt_ids"]), "ratings": values, "rating_mask": mask}

    def _prepare_process(self, e: dict, encoder, source: str) -> dict:
        from ..data.records import DataError
        from ..rewards.models import encode_steps, split_steps

        row = e.get("row", e.get("_row", 0))
        steps = e.get("steps")
        if steps is None:
            if not isinstance(e.get("completion"), str):
                raise DataError(source, row, "steps", "missing (a process row needs 'steps', or a text 'completion' cut by reward.step_split)")
            steps = split_steps(e["completion"], self.step_split())
        if not isinstance(steps, list) or not steps or not all(isinstance(x, str) and x.strip() for x in steps):
            raise DataError(source, row, "steps", "expected a non-empty list of non-empty strings")
        labels = e.get("labels")
        if not isinstance(labels, list) or len(labels) != len(steps):
            raise DataError(source, row, "labels", f"expected a list of {len(steps)} labels, one per step")
        values = []
        for j, v in enumerate(labels):
            x = number_field(v, source, row, f"labels[{j}]") if not isinstance(v, bool) else float(v)
            if not 0.0 <= x <= 1.0:
                raise DataError(source, row, f"labels[{j}]", f"expected 0/1 (or a probability), got {v!r}")
            values.append(x)
        prompt_ids, ids, ends = encode_steps(encoder, e["prompt"], steps)
        if len(ids) > encoder.max_length:
            if encoder.truncation in ("error", "skip"):
                raise DataError(source, row, "steps", f"{len(ids)} tokens is longer than max_length={encoder.max_length} (set data.truncation to left or right to drop the steps that do not fit)")
            cut = 0
            if encoder.truncation == "left":
                cut = min(len(ids) - encoder.max_length, max(len(prompt_ids) - 1, 0))
                ids, ends = ids[cut:], [j - cut for j in ends]
            keep = [j for j, end in enumerate(ends) if end < encoder.max_length]
            if not keep:
                raise DataError(source, row, "steps", f"no step fits max_length={encoder.max_length}")
            ids, ends, values = ids[: ends[keep[-1]] + 1], ends[: len(keep)], values[: len(keep)]
        return {"input_ids": ids, "step_ends": ends, "step_labels": values}

    def _collate_multi_objective(self, examples, pad_id):
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

    def _collate_process(self, examples, pad_id):
        seqs = [e["input_ids"] for e in examples]
        width = max(len(e["step_ends"]) for e in examples)
        positions = torch.zeros(len(examples), width, dtype=torch.long)
        labels = torch.zeros(len(examples), width, dtype=torch.float32)
        mask = torch.zeros(len(examples), width, dtype=torch.float32)
        for i, e in enumerate(examples):
            n = len(e["step_ends"])
            positions[i, :n] = torch.tensor(e["step_ends"], dtype=torch.long)
            labels[i, :n] = torch.tensor(e["step_labels"], dtype=torch.float32)
            mask[i, :n] = 1.0
        return {
            "input_ids": pad(seqs, pad_id),
            "attention_mask": pad([[1] * len(s) for s in seqs], 0),
            "step_positions": positions,
            "step_labels": labels,
            "step_mask": mask,
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
        }

    def collate(self, examples, pad_id):
        if self.cfg.type == "multi_objective":
            return self._collate_multi_objective(examples, pad_id)
        if self.cfg.type == "process":
            return self._collate_process(examples, pad_id)
        if self.data_kind == "ranked":
            return self._collate_ranked(examples, pad_id)
        if self.cfg.type == "preference":
            return self._collate_preference(examples, pad_id)
        batch = collate_pairs(examples, pad_id)
        batch["margin"] = torch.tensor([float(e.get("margin", 0.0)) for e in examples], dtype=torch.float32)
        batch["has_margin"] = torch.tensor([float("margin" in e) for e in examples], dtype=torch.float32)
        return batch

    def _collate_preference(self, examples, pad_id):
        a_mark, b_mark = self.markers
        seqs = [e["prompt_ids"] + a_mark + e["chosen_ids"] + b_mark + e["rejected_ids"] for e in examples]
        seqs += [e["prompt_ids"] + a_mark + e["rejected_ids"] + b_mark + e["chosen_ids"] for e in examples]
        return {
            "input_ids": pad(seqs, pad_id),
            "attention_mask": pad([[1] * len(s) for s in seqs], 0),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
        }

    def _collate_ranked(self, examples, pad_id):
        seqs, owner, scores = [], [], []
        for j, e in enumerate(examples):
            for c, s in zip(e["completion_ids"], e["scores"]):
                seqs.append(e["prompt_ids"] + c)
                owner.append(j)
                scores.append(float(s))
        return {
            "input_ids": pad(seqs, pad_id),
            "attention_mask": pad([[1] * len(s) for s in seqs], 0),
            "owner": torch.tensor(owner, dtype=torch.long),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "n_lists": torch.tensor(len(examples)),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
        }

    def weight(self, batch) -> float:
        if "owner" in batch:
            return float(batch["n_lists"])
        return float(batch["index"].shape[0])

    # ----------------------------------------------------------------------------------------------
    def _pair_losses(self, rc: torch.Tensor, rr: torch.Tensor, margin: torch.Tensor | None) -> torch.Tensor:
        params = {}
        if self.cfg.loss == "bradley_terry" and self.cfg.label_smoothing:
            params["label_smoothing"] = self.cfg.label_smoothing
        losses = reward_loss(self.cfg.loss, rc, rr, margin=margin, **params)
        if self.cfg.centering:
            losses = losses + centering(rc, rr, coef=self.cfg.centering)
        return losses

    def _multi_objective_loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
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
                metrics["accuracy"] = (float((d > 0).float().sum() + 0.5 * (d == 0).float().sum()), n)
                metrics["scale"] = (float(scale) * n, n)
                for k, a in enumerate(attributes):
                    metrics[f"gate/{a}"] = (float(g[:, k].sum()), n)
        return total, metrics

    def _process_loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        logits = policy(batch["input_ids"], batch["attention_mask"])  # [B, T]
        step_logits = logits.gather(1, batch["step_positions"])
        labels, mask = batch["step_labels"].to(logits.device), batch["step_mask"].to(logits.device)
        losses = reward_loss("process", step_logits, labels, mask)
        with torch.no_grad():
            correct = ((step_logits.detach() > 0) == (labels > 0.5)).float() * mask
            n = float(batch["index"].shape[0])
            metrics: Metrics = {"step_accuracy": (float(correct.sum()), float(mask.sum())), "steps": (float(mask.sum()), n)}
        return losses.sum(), metrics

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        if self.cfg.type == "multi_objective":
            return self._multi_objective_loss(policy, batch)
        if self.cfg.type == "process":
            return self._process_loss(policy, batch)
        rewards = policy(batch["input_ids"], batch["attention_mask"])  # [N, L]
        if "owner" in batch:
            return self._ranked_loss(rewards, batch)
        b = batch["index"].shape[0]
        if self.cfg.type == "preference":
            logits = (rewards[:b, 0] - rewards[b:, 0]) / 2
            losses = reward_loss("preference", logits)
            n, d = float(b), logits.detach()
            return losses.sum(), {
                "accuracy": (float((d > 0).float().sum() + 0.5 * (d == 0).float().sum()), n),
                "p_chosen": (float(torch.sigmoid(d).sum()), n),
            }
        rc, rr = rewards[:b], rewards[b:]  # [B, K]
        margin = None
        if self.cfg.margin:
            margin = (batch["margin"] * batch["has_margin"] * self.cfg.margin_scale)[:, None]
        losses = self._pair_losses(rc, rr, margin)  # [B, K]
        k = rewards.shape[1]
        training = getattr(policy, "training", True)
        if self.boot is not None and training:
            w = self.boot[:, batch["index"].cpu()].T.to(losses.device, losses.dtype)  # [B, K]
            losses = losses * w
        total = losses.sum() / k
        with torch.no_grad():
            d = (rc - rr).detach()
            n = float(b)
            metrics: Metrics = {
                "accuracy": (float(((d > 0).float() + 0.5 * (d == 0).float()).mean(-1).sum()), n),
                "margin": (float(d.mean(-1).sum()), n),
                "chosen": (float(rc.detach().mean(-1).sum()), n),
                "rejected": (float(rr.detach().mean(-1).sum()), n),
            }
            if k > 1:
                r = torch.cat([rc, rr]).detach()
                metrics["ensemble_std"] = (float(r.std(-1, unbiased=False).sum()), 2 * n)
        return total, metrics

    def _ranked_loss(self, rewards: torch.Tensor, batch) -> tuple[torch.Tensor, Metrics]:
        owner, scores = batch["owner"], batch["scores"].to(rewards.device)
        k = rewards.shape[1]
        total = rewards.new_zeros(())
        correct, n_pairs = 0.0, 0.0
        for j in range(int(batch["n_lists"])):
            sel = (owner == j).nonzero().squeeze(-1)
            r, s = rewards[sel], scores[sel]  # [m, K], [m]
            hi, lo = torch.nonzero(s[:, None] > s[None, :], as_tuple=True)
            list_loss = rewards.new_zeros(())
            if len(hi):
                list_loss = self._pair_losses(r[hi], r[lo], None).mean(0).sum()
                with torch.no_grad():
                    correct += float((r[hi] > r[lo]).float().mean(-1).sum())
                    n_pairs += len(hi)
            if self.cfg.regression:
                list_loss = list_loss + self.cfg.regression * regression(r, s[:, None].expand_as(r)).mean(0).sum()
            total = total + list_loss / k
        return total, {"accuracy": (correct, max(n_pairs, 1.0)), "pairs_per_list": (n_pairs, float(batch["n_lists"]))}
