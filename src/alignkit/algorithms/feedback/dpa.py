"""DPA, directional preference alignment (Wang et al. 2024, "Arithmetic Control of LLMs for Diverse User
Preferences: Directional Preference Alignment with Multi-Objective Rewards").

A user's preference is a unit direction ``v`` over the reward's attributes (``feedback.dpa.attributes``,
e.g. sentiment and brevity: ``v = (cos θ, sin θ)``); the scalar reward it asks for is ``R(x, y; v) = vᵀ
r(x, y)``. The direction is written into the prompt (``feedback.dpa.template``, default ``"<v {direction}>
{prompt}"``), and the policy ``π(y | x, v)`` is trained by preference-conditioned rejection sampling:

1. for each prompt draw ``θ ~ U(angle_range)`` (a stream named by (seed, round, row)), ``v = (cos θ, sin θ)``;
2. sample ``K`` completions ``y_1..y_K ~ π(· | x, v)`` from the current policy;
3. keep ``y* = argmax_k vᵀ r(x, y_k)`` (ties to the earlier sample);
4. fine-tune on ``−log π(y* | x, v)`` (token mean over the step); with ``rounds`` > 1, repeat 1–3 with new
   directions at evenly spaced steps (the paper's iterations).

``r`` is the task's gold attributes (``reward: gold``) or a multi-objective reward model's heads. At inference
the user picks ``v``: :func:`direction_prompt` writes it; ``<run>/conditioning.json`` holds the prompt with
``inference_direction`` (default the middle of ``angle_range``). Each round's statistics go to
``<run>/dpa_rounds.jsonl``: mean ``vᵀr`` of the samples and of the selected targets, and each attribute's mean
over the targets.

How ``v`` is written is ``feedback.dpa.encoding`` (registry :data:`DIRECTION_ENCODINGS`): ``decimal`` (the
paper's form, the default) writes its components with ``digits`` decimals (``"<v 0.87 0.50>"``); ``words``
quantises the angle ``θ = atan2(v₂, v₁)`` to the nearest of ``len(words)`` evenly spaced bucket centres over
``angle_range`` (``lo + i (hi − lo)/(n − 1)``) and writes that bucket's word (``"<v B>"`` for 30° with the
default five words A–E at 0°, 22.5°, 45°, 67.5°, 90°): one token per direction, which a small model reads far
more easily than two decimals.
"""

from __future__ import annotations

import json
import math
import random

import torch

from ...core.progress import say
from ...core.registry import Registry
from ...data.encode import Encoder
from .base import FEEDBACK_METHODS, SelfSampledRounds


def direction(theta_degrees: float) -> list[float]:
    """``(cos θ, sin θ)``."""
    t = math.radians(theta_degrees)
    return [math.cos(t), math.sin(t)]


DIRECTION_ENCODINGS: Registry = Registry("DPA direction encoding")


@DIRECTION_ENCODINGS.register("decimal")
def write_decimal(v, digits: int = 2, **_) -> str:
    """v's components with ``digits`` decimals, space-separated (the paper's form)."""
    return " ".join(f"{float(x):.{digits}f}" for x in v)


def angle_bucket(v, angle_range, buckets: int) -> int:
    """Index of the nearest of ``buckets`` evenly spaced angles over ``angle_range`` to v's angle (clipped)."""
    lo, hi = angle_range
    if buckets < 1:
        raise ValueError(f"feedback.dpa.words: give at least one bucket word, got {buckets}")
    if buckets == 1 or hi == lo:
        return 0
    theta = math.degrees(math.atan2(float(v[1]), float(v[0])))
    return min(buckets - 1, max(0, round((theta - lo) / (hi - lo) * (buckets - 1))))


@DIRECTION_ENCODINGS.register("words")
def write_words(v, words=("A", "B", "C", "D", "E"), angle_range=(0.0, 90.0), **_) -> str:
    """The word of v's angle bucket (see :func:`angle_bucket`)."""
    return str(words[angle_bucket(v, angle_range, len(words))])


def direction_prompt(template: str, prompt: str, v, digits: int = 2, encoding: str = "decimal", **encoding_options) -> str:
    """``template`` with ``{direction}`` as v written by ``encoding`` (``decimal``: components with ``digits``
    decimals; ``words``: the angle bucket's word, options ``words`` and ``angle_range``) and ``{prompt}``."""
    written = DIRECTION_ENCODINGS.get(encoding)(v, digits=digits, **encoding_options)
    return template.replace("{direction}", written).replace("{prompt}", prompt)


def options_prompt(options, prompt: str, v) -> str:
    """:func:`direction_prompt` with a ``feedback.dpa`` section's template and encoding."""
    return direction_prompt(options.template, prompt, v, options.digits, options.encoding, words=options.words, angle_range=options.angle_range)


def select_best(scores: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Index of ``argmax_k vᵀ r_k`` per prompt; ``scores [P, K, A]``, ``v [P, A]`` (first index on ties)."""
    return (scores * v[:, None, :]).sum(-1).argmax(-1)


@FEEDBACK_METHODS.register("dpa")
class DPA(SelfSampledRounds):
    method = "dpa"
    data_kind = "sft"
    data_kinds = ("sft",)
    placeholders = ("direction", "prompt")

    def __init__(self, recipe):
        super().__init__(recipe)
        o = self.options
        if len(o.attributes) < 1 or len(set(o.attributes)) != len(o.attributes):
            raise ValueError(f"feedback.dpa.attributes: give distinct attribute names, got {o.attributes}")
        if len(o.attributes) != 2:
            raise ValueError(f"feedback.dpa.attributes: directions are drawn as (cos t, sin t) over two attributes, got {len(o.attributes)}")
        lo, hi = o.angle_range
        if not lo <= hi:
            raise ValueError(f"feedback.dpa.angle_range: expected low <= high degrees, got {list(o.angle_range)}")
        if o.encoding not in DIRECTION_ENCODINGS:
            raise ValueError(f"feedback.dpa.encoding: {DIRECTION_ENCODINGS.unknown(o.encoding)}")
        if o.encoding == "words" and (not o.words or len(set(o.words)) != len(o.words)):
            raise ValueError(f"feedback.dpa.words: give distinct bucket words, got {o.words}")
        if o.inference_direction is not None and len(o.inference_direction) != len(o.attributes):
            raise ValueError(f"feedback.dpa.inference_direction: one component per attribute ({', '.join(o.attributes)}), got {o.inference_direction}")
        self.scorer = None
        self.round = 0
        self.round_steps = None
        self.total_steps = None

    def scores(self, prompts, completions) -> torch.Tensor:
        if self.scorer is None:
            from .attributes import attribute_scorer

            self.scorer = attribute_scorer(self.options.reward, self.options.attributes, self.task)
        return self.scorer(prompts, completions)

    def inference_direction(self) -> list[float]:
        o = self.options
        return list(o.inference_direction) if o.inference_direction is not None else direction(sum(o.angle_range) / 2)

    def inference_prompt(self, prompt: str) -> str:
        return options_prompt(self.options, prompt, self.inference_direction())

    def draw_direction(self, example: dict, split: str) -> list[float]:
        lo, hi = self.options.angle_range
        rng = random.Random(f"dpa-{self.recipe.train.seed}-{split}-{self.round}-{example.get('row', example.get('index', 0))}")
        return direction(rng.uniform(lo, hi))

    # ----------------------------------------------------------------------------------------------
    def rewrite(self, ctx, examples: list[dict], split: str) -> None:
        """Directions, K samples each from the current policy, the best by vᵀr as each example's target."""
        from ...rollout.generate import generate

        o = self.options
        for e in examples:
            if "dpa_prompt" not in e:
                e["dpa_prompt"] = self.prompt_text(e, split)
                e["dpa_original"] = self.tokenizer.decode(self.completion_ids(e), skip_special_tokens=True)
        prompts = [e["dpa_prompt"] for e in examples]
        vs = [self.draw_direction(e, split) for e in examples]
        asked = [options_prompt(o, p, v) for p, v in zip(prompts, vs, strict=True)]
        k = o.samples
        drawn = generate(ctx.model, ctx.tokenizer, asked, n=k, max_new_tokens=o.max_new_tokens, temperature=o.temperature,
                         seed=self.recipe.train.seed + 7919 * (self.round + 1) + (split != "train"))
        candidates = [[s.completion for s in drawn[i * k:(i + 1) * k]] for i in range(len(examples))]
        if o.keep_original:
            for c, e in zip(candidates, examples, strict=True):
                c.append(e["dpa_original"])
        width = len(candidates[0])
        flat_p = [p for p, c in zip(prompts, candidates, strict=True) for _ in c]
        r = self.scores(flat_p, [x for c in candidates for x in c]).view(len(examples), width, -1)
        v = torch.tensor(vs, dtype=torch.float32)
        best = select_best(r, v)
        value = (r * v[:, None, :]).sum(-1)
        encoder = Encoder(ctx.tokenizer, self.max_length, "right", source=self.source(split))
        for i, e in enumerate(examples):
            self.set_target(e, asked[i], candidates[i][int(best[i])], encoder)
            e["dpa_direction"] = vs[i]
        chosen = r[torch.arange(len(examples)), best]
        stats = {"round": self.round, "split": split, "rows": len(examples), "value/sampled": float(value.mean()),
                 "value/selected": float(value.gather(1, best[:, None]).mean()),
                 **{f"selected/{a}": float(chosen[:, j].mean()) for j, a in enumerate(o.attributes)}}
        if ctx.strategy.is_main:
            say(f"DPA round {self.round} ({split}): v.r of samples {stats['value/sampled']:+.3f}, selected {stats['value/selected']:+.3f}")
            self.recipe.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.recipe.output_dir / "dpa_rounds.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(stats) + "\n")

    def set_target(self, example: dict, prompt: str, target: str, encoder: Encoder) -> None:
        row = example.get("row", 0)
        prompt_ids = encoder.prompt_ids(prompt)
        prompt_ids, (completion,) = encoder.fit(prompt_ids, [encoder.completion_ids(prompt, prompt_ids, target, row, "DPA sample")], row)
        example.update(prompt_ids=prompt_ids, input_ids=prompt_ids + completion, loss_mask=[0] * len(prompt_ids) + [1] * len(completion), target=target)
