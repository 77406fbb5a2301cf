"""The shared part of the pluralistic reward types (``mixture``, ``pal``, ``vpl``): pairs labelled by users.

Every pair row names the user who labelled it in a metadata field (``reward.user_key``, default ``user``;
the pluralistic task writes ``user`` and ``group``). The model is a sequence classifier with ``L`` outputs
(``L = K`` reward heads for a mixture, ``L = D`` features for PAL and VPL) plus the type's own parameters
(cluster responsibilities, prototypes and user weights, the VPL encoder), saved beside the classifier as
``pluralistic.safetensors``; ``config.json`` carries ``reward_type``, ``users`` (the training users, in the
order of their index) and the type's sizes. The classifier folder stays a standard ``save_pretrained``
folder, so a mixture also loads as a K-output reward model (``{type: model, path: ..., reduce: min}`` is
MaxMin's reward).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...data.collate import collate_pairs
from .base import RewardModelling

EXTRA_FILE = "pluralistic.safetensors"


class UserRewardModel(nn.Module):
    """A classifier ``f`` (``[N, L]`` outputs) and the reward type's parameters ``extra``."""

    def __init__(self, model: nn.Module, extra: nn.Module, users: list[str]):
        super().__init__()
        self.model = model
        self.extra = extra
        self.config = model.config
        self.users = list(users)
        self.config.users = self.users

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()

    def user_index(self, users: list[Any]) -> torch.Tensor:
        """Each user's index among the training users, −1 for one the model has not seen."""
        where = {u: i for i, u in enumerate(self.users)}
        return torch.tensor([where.get(str(u), -1) for u in users], dtype=torch.long)

    def save_pretrained(self, out_dir: str | Path, **kwargs: Any) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        self.model.save_pretrained(out, **kwargs)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.extra.state_dict().items()}, str(out / EXTRA_FILE))

    @classmethod
    def from_pretrained(cls, path: str | Path, model_config: Any = None, make_extra=None) -> "UserRewardModel":
        """A saved model; ``make_extra(config)`` builds the empty parameters of its type (default: by ``reward_type``)."""
        from safetensors.torch import load_file

        from ...rewards.models import load_reward_model

        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        if not (path / EXTRA_FILE).exists():
            raise FileNotFoundError(f"{path}: no {EXTRA_FILE} (the user parameters of a {config.get('reward_type')} reward model)")
        from .base import REWARD_TYPES

        kind = REWARD_TYPES.get(config["reward_type"])
        model = load_reward_model(path, model_config, num_labels=kind.outputs_of(config))
        make_extra = make_extra or kind.make_extra
        extra = make_extra(model.config)
        extra.load_state_dict(load_file(str(path / EXTRA_FILE)))
        return cls(model, extra, config.get("users") or [])


def is_user_model(path: str | Path) -> bool:
    return (Path(path) / EXTRA_FILE).exists()


class UserForward(nn.Module):
    """The engine module: the whole :class:`UserRewardModel`, so its ``extra`` parameters are trained too."""

    def __init__(self, model: UserRewardModel):
        super().__init__()
        self.inner = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids, attention_mask)


def unwrap(policy: nn.Module) -> UserRewardModel:
    """The :class:`UserRewardModel` inside the engine module (DDP-wrapped or not)."""
    return getattr(policy, "module", policy).inner


class UserPairModelling(RewardModelling):
    """Pairs with a user id. Subclasses set :attr:`reward_type`, :meth:`outputs` (L), :meth:`make_extra`
    and :meth:`loss`; each example gets ``user`` (its user's index, −1 when not a training user)."""

    data_kind = "pair"

    def __init__(self, recipe):
        super().__init__(recipe)
        if recipe.data.kind not in ("auto", "pair") or self.cfg.ensemble > 1:
            raise ValueError(f"reward.type={self.cfg.type} trains on pairs with a user field (data.kind pair/auto) and without reward.ensemble")
        self.users: list[str] = []

    # the type's shape --------------------------------------------------------------------------
    def outputs(self) -> int:
        return self.outputs_of(self.cfg.model_dump())

    @staticmethod
    def outputs_of(config: dict) -> int:
        """L, the classifier's outputs, from a saved ``config.json`` (or the recipe's ``reward`` section)."""
        return int(config["feature_dim"])

    @classmethod
    def make_extra(cls, config) -> nn.Module:
        raise NotImplementedError

    sizes: tuple[str, ...] = ()  # the reward-section sizes a saved model records (read back by make_extra)

    def describe(self, config) -> None:
        """Write the type's :attr:`sizes` into the classifier's ``config``."""
        for name in self.sizes:
            setattr(config, name, getattr(self.cfg, name))

    # model -------------------------------------------------------------------------------------
    def load_model(self, path, model_config, adapter=None):
        if model_config.lora is not None or adapter is not None:
            raise ValueError("reward models are trained with full weights here (model.lora is not supported for algorithm: reward)")
        if is_user_model(path):
            return UserRewardModel.from_pretrained(path, model_config, self.make_extra)
        from ...rewards.models import load_reward_model

        model = load_reward_model(path, model_config, num_labels=self.outputs(), seed=self.recipe.train.seed)
        model.config.reward_type = self.reward_type
        self.describe(model.config)
        torch.manual_seed(self.recipe.train.seed)
        return UserRewardModel(model, self.make_extra(model.config), [])

    def module(self, model):
        return UserForward(model)

    # data --------------------------------------------------------------------------------------
    def user_of(self, e: dict, source: str) -> str:
        key = self.cfg.user_key
        value = (e.get("meta") or {}).get(key)
        if value is None:
            raise ValueError(f"reward.type={self.cfg.type}: {source} row {e.get('row', e['index'])} has no '{key}' field "
                             f"(the user who labelled the pair; set reward.user_key to the field that names it)")
        return str(value)

    def setup(self, ctx) -> None:
        model: UserRewardModel = ctx.model
        train = ctx.train_examples or []
        if not model.users:
            model.users = sorted({self.user_of(e, "train") for e in train})
            model.config.users = model.users
            self.init_users(model, ctx)
        index = {u: i for i, u in enumerate(model.users)}
        self.users = model.users
        for split, examples in (("train", train), ("eval", ctx.eval_examples or [])):
            for e in examples:
                e["user"] = index.get(self.user_of(e, split), -1)
                e["split"] = split

    def init_users(self, model: UserRewardModel, ctx) -> None:
        """Size the type's per-user parameters once the training users are known."""

    def collate(self, examples, pad_id):
        batch = collate_pairs(examples, pad_id)
        batch["user"] = torch.tensor([e["user"] for e in examples], dtype=torch.long)
        return batch

    @torch.no_grad()
    def all_pair_outputs(self, ctx, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(chosen [N, L], rejected [N, L], user [N])`` of every training pair under the current model."""
        model: UserRewardModel = ctx.model
        examples = ctx.train_examples
        chosen, rejected, users = [], [], []
        for start in range(0, len(examples), chunk):
            part = examples[start : start + chunk]
            batch = ctx.collate(part)
            with ctx.autocast():
                out = model(batch["input_ids"].to(ctx.device), batch["attention_mask"].to(ctx.device)).float().cpu()
            chosen.append(out[: len(part)])
            rejected.append(out[len(part) :])
            users.append(batch["user"])
        return torch.cat(chosen), torch.cat(rejected), torch.cat(users)

    @staticmethod
    def pair_outputs(policy, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, L], [B, L])``: the outputs of the chosen and the rejected sequences of a padded pair batch."""
        out = policy(batch["input_ids"], batch["attention_mask"])
        b = out.shape[0] // 2
        return out[:b], out[b:]


@torch.no_grad()
def score_texts(model: UserRewardModel, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 64,
                max_length: int = 512) -> torch.Tensor:
    """``[N, L]`` classifier outputs of ``(prompt, completion)`` texts (K head rewards, or D features)."""
    from ...data.encode import Encoder
    from ...rewards.models import encode_single, pad_batch

    encoder = Encoder(tokenizer, max_length, "left", source="score_texts")
    seqs = [encode_single(encoder, p, c) for p, c in zip(prompts, completions, strict=True)]
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(seqs), batch_size):
        batch = pad_batch(seqs[start : start + batch_size], tokenizer.pad_token_id)
        out.append(model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)
