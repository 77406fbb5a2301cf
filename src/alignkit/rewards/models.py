"""Reward models in the standard ``transformers`` format.

* A scalar reward model is an ``AutoModelForSequenceClassification`` with ``num_labels=1`` built from a
  causal LM checkpoint (the tiny Llama checkpoints load as ``LlamaForSequenceClassification``; the new
  ``score`` head is randomly initialised). ``config.pad_token_id`` is always set, because the model scores
  the **last non-pad token** of each row: with right padding that is the completion's EOS.
* An ensemble is a folder with ``ensemble.json`` and one such model per member in ``member-<k>/``; each
  member is an ordinary ``save_pretrained`` folder that other tools can read on its own.
* A pairwise preference model (PairRM-style) is the same single-logit classifier run on one input that
  holds both responses, ``prompt ␣A: a ␣B: b``; its logit ``ℓ(a, b)`` is made antisymmetric by averaging
  both orders: ``P(a ≻ b) = σ((ℓ(a, b) − ℓ(b, a)) / 2)``, so ``P(a ≻ b) + P(b ≻ a) = 1`` exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

PAIR_MARKERS = (" A:", " B:")


def _model_kwargs(model_config: Any) -> dict[str, Any]:
    from ..models.loading import DTYPES

    kwargs: dict[str, Any] = {"use_safetensors": True}
    if model_config is not None:
        kwargs["dtype"] = DTYPES[model_config.dtype]
        kwargs["trust_remote_code"] = model_config.trust_remote_code
        if model_config.attn_implementation:
            kwargs["attn_implementation"] = model_config.attn_implementation
    return kwargs


def pad_id_of(path: str | Path, trust_remote_code: bool = False) -> int:
    from ..models.loading import load_tokenizer

    return load_tokenizer(path, trust_remote_code).pad_token_id


def load_reward_model(path: str | Path, model_config: Any = None, num_labels: int = 1, pad_token_id: int | None = None, seed: int | None = None, reinit: str = "head"):
    """A sequence classifier from a causal LM or reward model folder, with ``pad_token_id`` set.

    ``seed`` re-initialises the new ``score`` head with that seed (ensemble members differ by it); with
    ``reinit="all"`` every weight matrix is re-drawn from N(0, initializer_range) with that seed (members
    from different random initialisations; only sensible when the checkpoint is itself untrained)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = Path(path)
    kwargs = _model_kwargs(model_config)
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=kwargs.get("trust_remote_code", False))
    fresh = not getattr(config, "architectures", None) or not any(a.endswith("ForSequenceClassification") for a in config.architectures)
    config.num_labels = num_labels
    if pad_token_id is None:
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else pad_id_of(path, kwargs.get("trust_remote_code", False))
    config.pad_token_id = pad_token_id
    model = AutoModelForSequenceClassification.from_pretrained(str(path), config=config, **kwargs)
    if fresh and seed is not None:
        head = getattr(model, "score", None) or getattr(model, "classifier", None)
        if reinit == "all":
            head = model
        if head is not None:
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in head.parameters():
                    if p.ndim >= 2:
                        std = getattr(model.config, "initializer_range", 0.02)
                        p.copy_(torch.randn(p.shape, generator=g) * std)
                    elif reinit != "all":
                        p.zero_()  # a head's bias; norm weights of the body are kept
    return model


class RewardEnsemble(nn.Module):
    """K scalar reward models; ``forward`` returns ``[B, K]`` rewards."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0] for m in self.members], dim=-1)

    def save_pretrained(self, out_dir: str | Path, **kwargs: Any) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for k, m in enumerate(self.members):
            m.save_pretrained(out / f"member-{k}", **kwargs)
        (out / "ensemble.json").write_text(json.dumps({"members": len(self.members)}, indent=1))

    @classmethod
    def from_pretrained(cls, path: str | Path, model_config: Any = None) -> "RewardEnsemble":
        path = Path(path)
        k = json.loads((path / "ensemble.json").read_text())["members"]
        return cls([load_reward_model(path / f"member-{i}", model_config) for i in range(k)])


def is_ensemble(path: str | Path) -> bool:
    return (Path(path) / "ensemble.json").exists()


def load_any_reward_model(path: str | Path, model_config: Any = None):
    """A saved scalar reward model or ensemble, in eval mode."""
    model = RewardEnsemble.from_pretrained(path, model_config) if is_ensemble(path) else load_reward_model(path, model_config)
    return model.eval()


def save_reward_model(model: nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    from ..models.loading import save_policy

    return save_policy(model, tokenizer, out_dir)


class RewardForward(nn.Module):
    """``forward(input_ids, attention_mask) -> [B, L]`` rewards (L=1 scalar, K ensemble members, or
    the classifier's labels); the module the training engine runs (and DDP wraps)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, RewardEnsemble):
            return self.model(input_ids, attention_mask).float()
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


# --------------------------------------------------------------------------------------------------
# tokenising prompt + completion(s) for scoring
# --------------------------------------------------------------------------------------------------
def encode_single(encoder: Any, prompt: Any, completion: Any) -> list[int]:
    """Token ids of prompt + completion exactly as the trainer encodes them (EOS appended)."""
    return encoder.encode({"prompt": prompt, "completion": completion}, "sft")["input_ids"]


def encode_pair_input(encoder: Any, prompt: Any, a: Any, b: Any) -> list[int]:
    """One PairRM-style input: prompt, marker A, response a, marker B, response b (each response ends
    with EOS). Chat-format responses are flattened to their text."""
    def text(x: Any) -> str:
        return x if isinstance(x, str) else "".join(m["content"] for m in x)

    tok = encoder.tokenizer
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt_ids = encoder.prompt_ids(prompt)
    a_ids, b_ids = ids(text(a)) + [tok.eos_token_id], ids(text(b)) + [tok.eos_token_id]
    tail = ids(PAIR_MARKERS[0]) + a_ids + ids(PAIR_MARKERS[1]) + b_ids
    keep = encoder.max_length - len(tail)
    if keep < 1:
        # Too long: keep both responses' ends balanced by trimming each response's end.
        half = max(1, (encoder.max_length - len(ids(PAIR_MARKERS[0])) - len(ids(PAIR_MARKERS[1])) - 1) // 2)
        a_ids, b_ids = a_ids[:half], b_ids[:half]
        tail = ids(PAIR_MARKERS[0]) + a_ids + ids(PAIR_MARKERS[1]) + b_ids
        keep = max(1, encoder.max_length - len(tail))
    return prompt_ids[-keep:] + tail


def pad_batch(seqs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    from ..data.collate import pad

    return {"input_ids": pad(seqs, pad_id), "attention_mask": pad([[1] * len(s) for s in seqs], 0)}
