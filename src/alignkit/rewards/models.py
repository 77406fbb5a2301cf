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
* A multi-objective (ArmoRM-style) model is a sequence classifier with ``num_labels=K``, one regression
  head per attribute (``config.id2label`` names them; ``config.attributes`` lists them), plus a gating
  layer saved next to it as ``gating.safetensors``. The gate reads the hidden state of the **last prompt
  token** (which, in a causal model, depends on the prompt only) and gives softmax weights ``g(x)``; the
  reward is ``r = β Σ_k g_k(x) r_k(x, y)`` with a learned scale ``β = exp(log_scale)``.
* A process reward model is an ``AutoModelForTokenClassification`` with ``num_labels=1``: a logit per
  token, read at the **last token of each step** (``config.reward_type = "process"``; ``config.step_split``
  is the regex that cuts a completion into steps).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.kinds import DEFAULT_STEP_SPLIT, encode_steps, split_steps  # noqa: F401 - re-exported; the steps kind owns them

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


def load_reward_model(path: str | Path, model_config: Any = None, num_labels: int = 1, pad_token_id: int | None = None, seed: int | None = None, reinit: str = "head", token_level: bool = False):
    """A sequence classifier from a causal LM or reward model folder, with ``pad_token_id`` set.

    ``seed`` re-initialises the new ``score`` head with that seed (ensemble members differ by it); with
    ``reinit="all"`` every weight matrix is re-drawn from N(0, initializer_range) with that seed (members
    from different random initialisations; only sensible when the checkpoint is itself untrained).
    ``token_level=True`` builds an ``AutoModelForTokenClassification`` instead (a logit per token, for
    process reward models; a new one gets ``classifier_dropout = 0``)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    from ..models.loading import resolve_model_path

    kwargs = _model_kwargs(model_config)
    path = resolve_model_path(path, code=kwargs.get("trust_remote_code", False))
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=kwargs.get("trust_remote_code", False))
    suffix = "ForTokenClassification" if token_level else "ForSequenceClassification"
    fresh = not getattr(config, "architectures", None) or not any(a.endswith(suffix) for a in config.architectures)
    if config.num_labels != num_labels:
        config.num_labels = num_labels
    if pad_token_id is None:
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else pad_id_of(path, kwargs.get("trust_remote_code", False))
    config.pad_token_id = pad_token_id
    if token_level and fresh:
        config.classifier_dropout = 0.0
    auto = AutoModelForTokenClassification if token_level else AutoModelForSequenceClassification
    model = auto.from_pretrained(str(path), config=config, **kwargs)
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


def reward_type_of(path: str | Path) -> str:
    """``config.json``'s ``reward_type`` (scalar, preference, multi_objective, process); scalar when unset."""
    config = Path(path) / "config.json"
    if not config.exists():
        return "scalar"
    return json.loads(config.read_text()).get("reward_type") or "scalar"


def load_any_reward_model(path: str | Path, model_config: Any = None):
    """A saved reward model of any type (scalar, ensemble, preference, multi-objective, process), in eval mode."""
    if is_ensemble(path):
        model = RewardEnsemble.from_pretrained(path, model_config)
    elif reward_type_of(path) == "multi_objective":
        model = MultiObjectiveRewardModel.from_pretrained(path, model_config)
    elif reward_type_of(path) == "process":
        model = load_reward_model(path, model_config, token_level=True)
    elif reward_type_of(path) == "spans":  # Text2Grad: bad / neutral / good logits per token
        model = load_reward_model(path, model_config, num_labels=3, token_level=True)
    elif reward_type_of(path) == "mixture":  # K reward heads, one per user cluster (MaxMin-RLHF; docs/pluralistic.md)
        model = load_reward_model(path, model_config, num_labels=int(json.loads((Path(path) / "config.json").read_text())["components"]))
    elif reward_type_of(path) == "brme":  # K Gaussian heads: K means then K log-stds (rewards/brme.py)
        model = load_reward_model(path, model_config, num_labels=2 * int(json.loads((Path(path) / "config.json").read_text())["heads"]))
    else:
        model = load_reward_model(path, model_config)
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
# multi-objective (ArmoRM-style) reward models
# --------------------------------------------------------------------------------------------------
GATING_FILE = "gating.safetensors"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost real token of each row (what a sequence classifier pools)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


class Gate(nn.Module):
    """``g(x) = softmax(W h_x)`` (or a one-hidden-layer MLP) over K attributes, from the prompt's
    representation ``h_x``, and the reward scale ``β = exp(log_scale)``. The last layer starts at zero,
    so an untrained gate weighs every attribute equally."""

    def __init__(self, hidden_size: int, n_attributes: int, hidden: int = 0):
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Linear(hidden_size, hidden), nn.ReLU(), nn.Linear(hidden, n_attributes))
        else:
            self.net = nn.Sequential(nn.Linear(hidden_size, n_attributes))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(h.float()), dim=-1)


class MultiObjectiveRewardModel(nn.Module):
    """K attribute heads (the ``num_labels=K`` score head of a sequence classifier) and a prompt gate.

    ``forward(input_ids, attention_mask, prompt_last)`` returns ``(scores [B, K], gate [B, K], β)``;
    ``reward = gated_reward(gate, scores, β)``. ``prompt_last`` is the index of each row's last prompt
    token; ``detach_prompt=True`` stops gradients from the gate into the body."""

    def __init__(self, model: nn.Module, gate: Gate):
        super().__init__()
        self.model = model
        self.gate = gate
        self.config = model.config

    @property
    def attributes(self) -> list[str]:
        return list(self.config.attributes)

    def _head(self) -> nn.Module:
        head = getattr(self.model, "score", None) or getattr(self.model, "classifier", None)
        if head is None:
            raise ValueError(f"{type(self.model).__name__}: no 'score' or 'classifier' head to read attributes from")
        return head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_last: torch.Tensor, detach_prompt: bool = False):
        body = getattr(self.model, self.model.base_model_prefix)
        hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        scores = self._head()(hidden[rows, last_token_index(attention_mask)]).float()  # [B, K]
        h_prompt = hidden[rows, prompt_last.clamp(min=0)]
        gate = self.gate(h_prompt.detach() if detach_prompt else h_prompt)
        return scores, gate, self.gate.log_scale.exp()

    @classmethod
    def build(cls, path: str | Path, model_config: Any, attributes: list[str], gate_hidden: int = 0, seed: int | None = None) -> "MultiObjectiveRewardModel":
        """A new model from a causal LM (or any) checkpoint: K fresh heads, a fresh gate."""
        model = load_reward_model(path, model_config, num_labels=len(attributes), seed=seed)
        config = model.config
        config.reward_type = "multi_objective"
        config.attributes = list(attributes)
        config.gate_hidden = gate_hidden
        config.problem_type = "regression"
        config.id2label = {i: a for i, a in enumerate(attributes)}
        config.label2id = {a: i for i, a in enumerate(attributes)}
        if seed is not None:
            torch.manual_seed(seed)
        return cls(model, Gate(config.hidden_size, len(attributes), gate_hidden))

    def save_pretrained(self, out_dir: str | Path, **kwargs: Any) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        self.model.save_pretrained(out, **kwargs)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.gate.state_dict().items()}, str(out / GATING_FILE))

    @classmethod
    def from_pretrained(cls, path: str | Path, model_config: Any = None) -> "MultiObjectiveRewardModel":
        from safetensors.torch import load_file

        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        attributes = config.get("attributes")
        if config.get("reward_type") != "multi_objective" or not attributes:
            raise ValueError(f"{path}: not a multi-objective reward model (config.json needs reward_type: multi_objective and attributes)")
        if not (path / GATING_FILE).exists():
            raise FileNotFoundError(f"{path}: no {GATING_FILE} (the gating layer of a multi-objective reward model)")
        model = load_reward_model(path, model_config, num_labels=len(attributes))
        gate = Gate(model.config.hidden_size, len(attributes), int(config.get("gate_hidden") or 0))
        gate.load_state_dict(load_file(str(path / GATING_FILE)))
        return cls(model, gate)


def is_multi_objective(path: str | Path) -> bool:
    return reward_type_of(path) == "multi_objective" and (Path(path) / GATING_FILE).exists()


class MultiObjectiveForward(nn.Module):
    """The module the engine runs for multi-objective training (``detach_prompt`` fixed at build)."""

    def __init__(self, model: MultiObjectiveRewardModel, detach_prompt: bool = True):
        super().__init__()
        self.model = model
        self.detach_prompt = detach_prompt

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_last: torch.Tensor):
        return self.model(input_ids, attention_mask, prompt_last, detach_prompt=self.detach_prompt)


# --------------------------------------------------------------------------------------------------
# process (per-step) reward models
# --------------------------------------------------------------------------------------------------
STEP_AGGREGATES = ("min", "prod", "mean", "last")


def aggregate_steps(probs: torch.Tensor, how: str) -> torch.Tensor:
    """One number from a completion's per-step probabilities: ``min``, ``prod``, ``mean`` or ``last``."""
    if how not in STEP_AGGREGATES:
        raise KeyError(f"unknown step aggregate {how!r}; allowed: {', '.join(STEP_AGGREGATES)}")
    if probs.numel() == 0:
        return torch.tensor(float("nan"))
    if how == "min":
        return probs.min()
    if how == "prod":
        return probs.prod()
    if how == "mean":
        return probs.mean()
    return probs[-1]


class ProcessForward(nn.Module):
    """``forward(input_ids, attention_mask) -> [B, T]`` per-token step logits of a token classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[..., 0].float()


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
