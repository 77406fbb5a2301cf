"""Token-level rewards from a span reward model (Text2Grad; ``reward.type: spans`` trains one).

:class:`SpanRewardSource` is a reward source with ``token_level = True``: besides ``score`` (the sum of a
completion's token rewards, what sequence-level estimators and evaluation read) it has ``score_tokens``,
one reward per token of the **policy's** tokenisation of each completion, which online RL puts on those
tokens (``rl.estimator: ppo`` runs them through GAE; see ``docs/feedback.md``).

The reward model reads ``prompt + completion`` in its own tokenisation; token ``j``'s reward there is
``p_good − p_bad``. When the caller gives each completion's policy-token character offsets, every
reward-model token's reward goes to the policy token holding its last character (so the sum is kept and
the policy's and the reward model's tokenisers need not agree); without offsets the rewards come back in
the reward model's own tokens. The EOS the encoder appends is scored too and its reward goes to the last
policy token position when the offsets count one more token than the text has (a sampled EOS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .sources import _batched_forward, _check_lengths, _ModelBacked

__all__ = ["SpanForward", "SpanRewardSource", "map_to_offsets", "text_offsets"]


class SpanForward(nn.Module):
    """``forward(input_ids, attention_mask) -> [B, T, 3]`` logits (bad, neutral, good) of a token classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


def text_offsets(tokenizer: Any, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character ``(start, end)`` of each token of ``ids`` in ``tokenizer.decode(ids, skip_special_tokens=True)``;
    a special token (EOS) is an empty range at the end of the text so far."""
    offsets, start = [], 0
    for i in range(len(ids)):
        end = len(tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=True))
        offsets.append((start, max(end, start)))
        start = max(end, start)
    return offsets


def map_to_offsets(values: Sequence[float], source: Sequence[tuple[int, int]], target: Sequence[tuple[int, int]]) -> list[float]:
    """Move per-token ``values`` on ``source`` character ranges onto ``target`` ranges: a source token's value
    goes to the target token holding its last character (the first target token ending at or after it; a
    value past the last target, such as an EOS, goes to the last target token). Sums are kept."""
    out = [0.0] * len(target)
    if not target:
        return out
    for value, (start, end) in zip(values, source, strict=True):
        last = end - 1 if end > start else start
        j = next((k for k, (s, e) in enumerate(target) if e > last and e > s), len(target) - 1)
        out[j] += float(value)
    return out


class SpanRewardSource(_ModelBacked):
    """A saved span reward model (``reward_type: spans``): token rewards ``p_good − p_bad``."""

    def __init__(self, path: str | Path, token_level: bool = True, **kwargs: Any):
        super().__init__(path, **kwargs)
        self.name = f"spans:{self.path.name}"
        self.token_level = bool(token_level)  # false: online RL reads only the summed score (sequence-level credit)

    @torch.no_grad()
    def _token_values(self, prompts, completions, progress: bool) -> list[tuple[list[float], list[tuple[int, int]]]]:
        """Per completion: its reward-model tokens' rewards and their character offsets in the completion
        (the appended EOS is an empty range at the end)."""
        from ..data.feedback_kinds import char_offsets
        from ..objectives.feedback import expected_label
        from .models import pad_batch

        _check_lengths(prompts, completions)
        seqs, starts, offsets = [], [], []
        for p, c in zip(prompts, completions, strict=True):
            out = self.encoder.encode({"prompt": p, "completion": c}, "sft")
            seqs.append(out["input_ids"])
            n = sum(out["loss_mask"])
            starts.append(len(out["input_ids"]) - n)
            ids = self.tokenizer(c, add_special_tokens=False)["input_ids"]
            own = char_offsets(self.tokenizer, c, ids) if ids else []
            offsets.append((own + [(len(c), len(c))] * max(0, n - len(own)))[:n])
        values: list[list[float]] = [[] for _ in seqs]

        def run(idx: list[int]) -> None:
            batch = pad_batch([seqs[i] for i in idx], self.tokenizer.pad_token_id)
            logits = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)).logits
            reward = expected_label(logits).cpu()
            for row, i in enumerate(idx):
                values[i] = reward[row, starts[i]:len(seqs[i])].tolist()

        _batched_forward(len(seqs), [len(s) for s in seqs], self.batch_size, run, progress, f"spans {self.name}")
        return list(zip(values, offsets, strict=True))

    def score_tokens(self, prompts, completions, *, offsets: Sequence[Sequence[tuple[int, int]]] | None = None, progress: bool = False,
                     **context: Any) -> list[Tensor]:
        """One 1-D tensor of token rewards per completion: on the policy tokens of ``offsets`` (character ranges
        of each completion's tokens) when given, else on the reward model's own completion tokens."""
        per = self._token_values(prompts, completions, progress)
        if offsets is None:
            return [torch.tensor(v, dtype=torch.float32) for v, _ in per]
        if len(offsets) != len(per):
            raise ValueError(f"{len(per)} completions but {len(offsets)} offset lists")
        return [torch.tensor(map_to_offsets(v, src, tgt), dtype=torch.float32) for (v, src), tgt in zip(per, offsets, strict=True)]

    def score(self, prompts, completions, *, progress: bool = False, **context: Any) -> Tensor:
        """The sum of each completion's token rewards."""
        per = self._token_values(prompts, completions, progress)
        return torch.tensor([sum(v) for v, _ in per], dtype=torch.float32)
