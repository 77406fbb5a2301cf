"""Chain of Hindsight (Liu, Sferrazza and Abbeel 2023, "Chain of Hindsight Aligns Language Models with Feedback").

Each piece of feedback becomes one sequence in which answers follow natural-language feedback phrases:

    x ⊕ " A worse answer:" ⊕ y⁻ ⊕ " A better answer:" ⊕ y⁺

(``feedback.hindsight.worse`` / ``better``). By default (``order: random``, as in the paper) each row's
order is drawn from (seed, row), so that both phrases also follow the prompt directly, as the positive
phrase does at inference; ``worse_first`` keeps the order above. The loss is the NLL of the answer tokens given everything before them,

    L = −Σ_{t ∈ answer tokens} log π(s_t | s_<t),

with the prompt and the feedback phrases masked out (``train_on: better`` also masks y⁻). Each answer
keeps its end-of-sequence token, so the policy learns to stop after an answer. At inference the policy is
conditioned on the positive phrase: the prompt ``x + " " + better`` (``alignkit generate RUN/final -p
"review of the soup : A better answer:"``; ``<run>/conditioning.json`` holds the template).

Rows: ``pair`` rows (y⁺ = chosen, y⁻ = rejected) or ``critique`` rows: with a ``revision``, y⁺ = the
revision and y⁻ = the criticised completion; without one, a single answer after the phrase its judgment
earns (``label: true``: ``x ⊕ better ⊕ y``; false: ``x ⊕ worse ⊕ y``, trained only with ``train_on: both``).
The paper's random masking of past tokens is not done.
"""

from __future__ import annotations

import random

from .base import FEEDBACK_METHODS, WeightedSequences


@FEEDBACK_METHODS.register("hindsight")
class ChainOfHindsight(WeightedSequences):
    method = "hindsight"
    data_kind = "pair"
    data_kinds = ("pair", "critique")

    def inference_prompt(self, prompt: str) -> str:
        return f"{prompt} {self.options.better}"

    def convert(self, example, ctx, split: str) -> None:
        prompt = self.prompt_text(example, split)
        if "chosen_ids" in example:
            better, worse = example["chosen_ids"], example["rejected_ids"]
        elif "revision_ids" in example:
            better, worse = example["revision_ids"], self.completion_ids(example)
        elif example["label"]:  # a positive judgment and nothing to revise: x, better phrase, y
            better, worse = self.completion_ids(example), None
        else:  # a negative judgment without a revision: x, worse phrase, y
            better, worse = None, self.completion_ids(example)
        answers = [(self.options.worse, worse, self.options.train_on == "both"), (self.options.better, better, True)]
        answers = [a for a in answers if a[1] is not None]
        if self.options.order == "random" and random.Random(f"{self.recipe.train.seed}-{split}-{example.get('row')}-hindsight").random() < 0.5:
            answers.reverse()
        ids = self.ids(f"{prompt} {answers[0][0]}")
        mask = [0] * len(ids)
        for k, (phrase, answer, trained) in enumerate(answers):
            if k:
                phrase_ids = self.ids(f" {phrase}")
                ids += phrase_ids
                mask += [0] * len(phrase_ids)
            ids += list(answer)
            mask += [int(trained)] * len(answer)
        self.fits(example, split, ids, "hindsight sequence")
        keep = {k: example[k] for k in ("row", "index", "meta") if k in example}
        example.clear()
        example.update(keep, input_ids=ids, loss_mask=mask)
