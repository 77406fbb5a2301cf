"""A GenARM autoregressive reward model (``reward.type: arm``) as a reward source.

GenARM (Xu et al. 2025) writes the reward of a completion as a sum of the ARM's token log-probs; the ARM is
trained with the Bradley-Terry loss ``-log sigmoid(beta_r * (sum_t log pi_r(y_w,t) - sum_t log pi_r(y_l,t)))``
(:mod:`alignkit.algorithms.reward.arm`), so the reward whose differences are the BT logits is

    r(x, y) = beta_r * sum_t log pi_r(y_t | x, y_<t)

with ``beta_r`` the folder's ``arm_beta`` (``config.json``). That is what this source returns by default: the
same number the ARM's training logs as ``chosen`` / ``rejected``. ``arm_beta=1`` gives the paper's unscaled
``sum_t log pi_r``, the reward that GenARM's decoding rule ``pi_base * pi_r^(1/beta)`` optimises under a KL of
strength ``beta``. The completion is encoded exactly as the trainer encodes it (prompt, completion, EOS; the EOS
token is a target), so scoring a training pair gives its logged rewards.

An ARM folder therefore works wherever a reward is named: ``rl.reward: runs/arm/final``, ``alignkit eval
--reward runs/arm/final``, a judge of ``alignkit iterate``, ``best_of_n -O reward=...``, and, with a mapping,
``{type: model, path: runs/arm/final, arm_beta: 1.0}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .sources import RewardSource, _check_lengths


class ArmRewardSource(RewardSource):
    """``score(prompts, completions) = beta_r * sum_t log pi_r(y_t | x, y_<t)`` over each completion's tokens
    (EOS included), ``beta_r`` = ``arm_beta`` (default: the folder's ``arm_beta``, else 1)."""

    def __init__(self, path: str | Path, arm_beta: float | None = None, batch_size: int = 32, max_length: int = 512,
                 device: str | None = None, dtype: str = "float32"):
        from ..config import ModelConfig
        from ..data.encode import Encoder
        from ..models.loading import load_causal_lm, load_tokenizer, resolve_model_path
        from ..models.logprobs import TargetLogProbs

        self.path = resolve_model_path(path, "reward model")
        config = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        if config.get("reward_type") != "arm":
            raise ValueError(f"{self.path} is not an autoregressive reward model (config.json reward_type: {config.get('reward_type')!r}, not 'arm')")
        beta = config.get("arm_beta", 1.0) if arm_beta is None else arm_beta
        if not float(beta) > 0:
            raise ValueError(f"arm_beta must be > 0 (got {beta})")
        self.arm_beta = float(beta)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = load_tokenizer(self.path)
        self.model = load_causal_lm(self.path, ModelConfig(dtype=dtype)).to(self.device).eval()
        self.logps = TargetLogProbs(self.model)
        self.encoder = Encoder(self.tokenizer, max_length, "left", source=str(self.path))
        self.batch_size = int(batch_size)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.name = self.path.name if self.path.name != "final" else self.path.parent.name

    @torch.no_grad()
    def sequence_logps(self, prompts: Sequence[Any], completions: Sequence[Any]) -> Tensor:
        """``[N]`` float32 ``sum_t log pi_r(y_t | x, y_<t)`` of every (prompt, completion), EOS included."""
        from ..data.collate import pad

        _check_lengths(prompts, completions)
        examples = [self.encoder.encode({"prompt": p, "completion": c}, "sft") for p, c in zip(prompts, completions)]
        out = torch.zeros(len(examples), dtype=torch.float32)
        order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            rows = [examples[i] for i in idx]
            ids = pad([r["input_ids"] for r in rows], self.pad_id).to(self.device)
            mask = pad([[1] * len(r["input_ids"]) for r in rows], 0).to(self.device)
            targets = pad([r["loss_mask"] for r in rows], 0).to(self.device)
            out[idx] = self.logps(ids, mask, targets).float().sum(-1).cpu()
        return out

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], *, progress: bool = False, **context: Any) -> Tensor:
        return self.arm_beta * self.sequence_logps(prompts, completions)
