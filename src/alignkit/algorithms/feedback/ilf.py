"""ILF, imitation learning from language feedback (Scheurer et al. 2023, "Training Language Models with
Language Feedback at Scale").

For each row ``(x, y₀, f)`` — a prompt, a completion and a natural-language critique of it (a ``critique``
row) — one round is

1. **refine**: K refinements ``y_k ~ π(· | x, y₀, f)`` from the current policy, prompted with
   ``feedback.ilf.template`` (default ``"{prompt}{completion} (feedback: {critique}) improved:"``); the row's
   ``revision``, when it has one and ``use_revision`` is on, is a candidate too, and so is ``y₀`` itself
   (a row is never moved to a text the reward likes less than the one it had);
2. **select**: ``y* = argmax_k R(x, y_k)`` under the reward source ``feedback.ilf.reward`` (the task's gold
   reward by default; any reward source: a reward model folder, ``module:function``, ...); ties go to the
   earlier candidate (the revision, then the samples in order, then ``y₀``);
3. **fine-tune**: ``L = −log π(y* | x)`` (token mean over the step), plus ``refine_weight ·
   (−log π(y* | x, y₀, f))`` which teaches the policy to refine.

``feedback.ilf.rounds`` > 1 repeats refine → select at evenly spaced steps of the run, drawing the
refinements from the policy being trained (the paper's iteration). Each round's selection statistics go
to ``<run>/ilf_rounds.jsonl``: mean reward of the original completions, of the sampled refinements, of
the selected targets, and the shares of targets that are the row's revision or its original completion.
"""

from __future__ import annotations

import json

import torch

from ...core.progress import say
from ...data.collate import collate_sequences
from ...data.encode import Encoder
from ...engine.contract import Metrics
from .base import FEEDBACK_METHODS, SelfSampledRounds


@FEEDBACK_METHODS.register("ilf")
class ILF(SelfSampledRounds):
    method = "ilf"
    data_kind = "critique"
    data_kinds = ("critique",)
    placeholders = ("prompt", "completion", "critique")

    def __init__(self, recipe):
        super().__init__(recipe)
        if self.options.samples == 0 and not self.options.use_revision:
            raise ValueError("feedback.ilf: samples=0 and use_revision=false leave no refinement to select")
        self.source_ = None
        self.round = 0
        self.round_steps = None
        self.total_steps = None

    def reward(self):
        if self.source_ is None:
            from ...rewards.sources import build_reward_source

            spec = self.options.reward
            self.source_ = build_reward_source(f"gold:{self.recipe.task.name}" if spec == "gold" else spec)
        return self.source_

    def refinement_prompt(self, text: dict) -> str:
        return self.options.template.replace("{prompt}", text["prompt"]).replace("{completion}", text["completion"]).replace("{critique}", text["critique"])

    # ----------------------------------------------------------------------------------------------
    def rewrite(self, ctx, examples: list[dict], split: str) -> None:
        """Refine -> select for ``examples`` with the current policy; rewrites their targets in place."""
        from ...rollout.generate import generate

        cfg = self.options
        texts = [e["text"] for e in examples]
        k = cfg.samples
        samples = []
        if k:
            prompts = [self.refinement_prompt(t) for t in texts]
            samples = generate(ctx.model, ctx.tokenizer, prompts, n=k, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                               seed=self.recipe.train.seed + 7919 * (self.round + 1) + (split != "train"))
        candidates, owners = [], []  # per row: [(text, is the row's revision)]
        for i, t in enumerate(texts):
            options = [(t["revision"], True)] if cfg.use_revision and t.get("revision") else []
            options += [(s.completion, False) for s in samples[i * k:(i + 1) * k] if s.completion.strip()]
            options.append((t["completion"], False))  # keeping y0 is a candidate: a row never moves to a worse text
            candidates.append(options)
            owners += [i] * len(options)
        flat = [c for options in candidates for c, _ in options]
        scores = self.reward().score([texts[i]["prompt"] for i in owners], flat).tolist() if flat else []
        originals = self.reward().score([t["prompt"] for t in texts], [t["completion"] for t in texts]).tolist()
        encoder = Encoder(ctx.tokenizer, self.max_length, "right", source=self.source(split))
        chosen_scores, sampled, from_revision, kept, at = [], [], 0, 0, 0
        for e, t, options in zip(examples, texts, candidates, strict=True):
            own = scores[at:at + len(options)]
            at += len(options)
            sampled += [v for v, (_, revision) in zip(own[:-1], options[:-1]) if not revision]
            best = max(range(len(options)), key=lambda j: (own[j], -j))
            chosen_scores.append(own[best])
            from_revision += int(options[best][1])
            kept += int(best == len(options) - 1)
            self.set_target(e, t, options[best][0], encoder)
        stats = {"round": self.round, "split": split, "rows": len(examples), "reward/original": _mean(originals), "reward/sampled": _mean(sampled),
                 "reward/selected": _mean(chosen_scores), "selected_revision": from_revision / max(len(examples), 1), "kept_original": kept / max(len(examples), 1)}
        if ctx.strategy.is_main:
            say(f"ILF round {self.round} ({split}): reward of originals {stats['reward/original']:+.3f}, sampled refinements "
                f"{stats['reward/sampled']:+.3f}, selected {stats['reward/selected']:+.3f} ({100 * stats['selected_revision']:.0f}% the revision, {100 * stats['kept_original']:.0f}% the original)")
            self.recipe.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.recipe.output_dir / "ilf_rounds.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(stats) + "\n")

    def set_target(self, example: dict, text: dict, target: str, encoder: Encoder) -> None:
        row = example.get("row", 0)
        prompt_ids = encoder.prompt_ids(text["prompt"])
        prompt_ids, (completion,) = encoder.fit(prompt_ids, [encoder.completion_ids(text["prompt"], prompt_ids, target, row, "refinement")], row)
        example.update(prompt_ids=prompt_ids, input_ids=prompt_ids + completion, loss_mask=[0] * len(prompt_ids) + [1] * len(completion),
                       target=target)
        if self.options.refine_weight > 0:
            refine = self.ids(self.refinement_prompt(text))
            ids = (refine + completion)[-self.max_length:]
            example["refine_ids"], example["refine_mask"] = ids, ([0] * len(refine) + [1] * len(completion))[-self.max_length:]

    # ----------------------------------------------------------------------------------------------
    def collate(self, examples, pad_id):
        batch = super().collate(examples, pad_id)
        if self.options.refine_weight > 0:
            refine = collate_sequences([e["refine_ids"] for e in examples], [e["refine_mask"] for e in examples], pad_id)
            batch.update({f"refine_{k}": v for k, v in refine.items()})
        return batch

    def loss(self, policy, batch) -> tuple[torch.Tensor, Metrics]:
        total, metrics = super().loss(policy, batch)
        if self.options.refine_weight > 0:
            from ...objectives.feedback import weighted_nll

            logp = policy(batch["refine_input_ids"], batch["refine_attention_mask"], batch["refine_loss_mask"])
            mask = batch["refine_loss_mask"].clone()
            mask[:, 0] = 0
            refine = weighted_nll(logp, mask, batch["seq_weight"].to(logp.device)).sum()
            total = total + self.options.refine_weight * refine
            metrics["refine_nll"] = (refine.detach(), float(mask.sum()))
        return total, metrics


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")
