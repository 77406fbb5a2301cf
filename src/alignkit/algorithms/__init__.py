"""Algorithms: each is a short composition of a data kind, a signal and an objective on the shared engine.

:func:`build_algorithm` refuses what would only fail (or silently do nothing) at training time, before
any model work: loss parameters the chosen loss does not take (``dpo.params``, ``dpo.mix``, and the
parameters ``unpaired`` / ``listwise`` pass). :func:`train` then checks every row of the data files
(:func:`check_data`), the model folder and the rollout budget against the model's context, and only then
loads a model.
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Any

from ..config import ConfigError, Recipe
from ..core.registry import check_params
from ..engine.contract import Algorithm
from .dpo import DPO
from .feedback import Feedback
from .listwise import Listwise
from .reward import RewardModelling
from .rl import OnlineRL
from .selfplay import SPPO
from .sft import SFT
from .unpaired import Unpaired

ALGORITHMS: dict[str, type[Algorithm]] = {"sft": SFT, "dpo": DPO, "kto": Unpaired, "pro": Listwise, "reward": RewardModelling, "rl": OnlineRL, "sppo": SPPO, "feedback": Feedback}


def build_algorithm(recipe: Recipe) -> Algorithm:
    """The recipe's algorithm, after checking its loss parameters (a :class:`ConfigError` names the key)."""
    if recipe.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{recipe.algorithm}'; allowed: {', '.join(ALGORITHMS)}")
    algorithm = ALGORITHMS[recipe.algorithm](recipe)  # refuses unknown loss names
    check_loss_params(recipe)
    return algorithm


# --------------------------------------------------------------------------------------------------
# loss parameters, checked when the recipe is built into an algorithm
# --------------------------------------------------------------------------------------------------
def _check(key: str, registry, name: str, n_positional: int, params: dict[str, Any]) -> None:
    from ..objectives._common import lookup

    if name not in registry:
        key = key.rsplit(".", 1)[0] + ".loss" if "." in key else f"{key}.loss"
    try:
        fn = lookup(registry, name)
        check_params(fn, f"{registry.kind} {name!r}", n_positional, params)
    except (TypeError, ValueError) as e:
        message = str(e)
        import inspect

        if name in registry:
            accepted = list(inspect.signature(registry.get(name)).parameters)[n_positional:]
            hints = [f"'{p}' -> '{m[0]}'" for p in params if p not in accepted for m in [difflib.get_close_matches(p, accepted, n=1)] if m]
            if hints:
                message += f" (did you mean {', '.join(hints)}?)"
        raise ConfigError(f"{key}: {message}") from None


def check_loss_params(recipe: Recipe) -> None:
    """Every loss parameter the recipe gives (or the algorithm will pass) is one the loss accepts."""
    if recipe.algorithm == "dpo":
        from ..objectives.pairwise import PAIRWISE_LOSSES
        from .dpo import TDPO

        cfg = recipe.dpo
        if cfg.mix:
            for i, item in enumerate(cfg.mix):
                params = item.get("params") or {}
                if not isinstance(params, dict):
                    raise ConfigError(f"dpo.mix[{i}].params: expected a mapping of parameter names to values, got {params!r}")
                _check(f"dpo.mix[{i}].params", PAIRWISE_LOSSES, item["loss"], 2, params)
        elif cfg.loss in TDPO:
            if cfg.params:
                raise ConfigError(f"dpo.params: dpo.loss={cfg.loss} takes no extra parameters (got {', '.join(map(repr, cfg.params))}); its alpha is dpo.tdpo_alpha")
        else:
            _check("dpo.params", PAIRWISE_LOSSES, cfg.loss, 2, dict(cfg.params))
    elif recipe.algorithm == "kto":
        from ..objectives.unpaired import UNPAIRED_LOSSES

        cfg = recipe.unpaired
        passed = {"kto": ("desirable_weight", "undesirable_weight", "z0"), "bco": ("delta",)}.get(cfg.loss, ())
        _check("unpaired", UNPAIRED_LOSSES, cfg.loss, 2, dict.fromkeys(passed, 0.0))
    elif recipe.algorithm == "pro":
        from ..objectives.listwise import LISTWISE_LOSSES

        cfg = recipe.listwise
        _check("listwise", LISTWISE_LOSSES, cfg.loss, 4, {"sft_weight": cfg.sft_weight} if cfg.sft_weight else {})


# --------------------------------------------------------------------------------------------------
# checks before any model work
# --------------------------------------------------------------------------------------------------
def check_data(recipe: Recipe, algorithm: Algorithm) -> None:
    """Read and check every row of ``data.train`` and ``data.eval`` with the kind the run trains on (a
    :class:`~alignkit.data.errors.DataError` names file, row and field), the algorithm's whole-file checks
    (``check_records``), and report exact duplicate rows. Needs no tokenizer or model."""
    from ..core.progress import say
    from ..data.records import load_records
    from ..data.sources import read_options

    data = recipe.data
    kind = getattr(algorithm, "row_kind", "") or (algorithm.data_kind if data.kind == "auto" else data.kind)
    options = algorithm.kind_options() if hasattr(algorithm, "kind_options") else {}
    for source, role in ((data.train, "train"), (data.eval, "eval")):
        if source is None:
            continue
        records, summary = load_records(source, kind=kind, skip_invalid=data.skip_invalid, duplicates=data.duplicates,
                                        read=read_options(data, role), **options)
        check = getattr(algorithm, "check_records", None)
        if check is not None:
            check(records, summary.source)
        line = summary.duplicates_line()
        if line:
            say(line, os.environ.get("RANK", "0") == "0")


def model_context(recipe: Recipe) -> int | None:
    """The starting model's context length in tokens (``max_position_embeddings``), read from its
    ``config.json`` (or the tiny model's shape) without loading it; None when the config does not say."""
    if recipe.model.path is None:
        return recipe.model.tiny.max_position_embeddings
    from ..models.loading import resolve_model_path

    folder = resolve_model_path(recipe.model.path, "model.path", code=recipe.model.trust_remote_code)
    config = json.loads((folder / "config.json").read_text())
    config = config.get("text_config") or config
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def check_run(recipe: Recipe, algorithm: Algorithm) -> None:
    """What can be checked before a model is loaded: the model folder, the reward source, the data."""
    if recipe.model.path is not None:
        from ..models.loading import check_model_folder

        check_model_folder(recipe.model.path, "model.path")
    if recipe.algorithm == "rl":
        from ..rewards.sources import check_reward_spec

        context = model_context(recipe)
        budget = recipe.rl.sampling.max_new_tokens
        if context is not None and budget >= context:
            raise ConfigError(f"rl.sampling.max_new_tokens ({budget}) must be smaller than the model's context of {context} tokens "
                              "(max_position_embeddings), which also holds the prompt")
        if recipe.rl.reward != "gold":
            check_reward_spec(recipe.rl.reward, "rl.reward")
    check_data(recipe, algorithm)


def train(recipe: Recipe):
    """Run a recipe end to end; returns the folder of the final model."""
    from ..engine.trainer import Trainer

    if recipe.iterate is not None:
        raise ValueError("this recipe has an iterate: section (rounds of sampling, judging and training): run it with `alignkit iterate RECIPE`")
    algorithm = build_algorithm(recipe)
    check_run(recipe, algorithm)
    if recipe.scale.backend == "ray" and recipe.scale.trainer_processes > 1 and "WORLD_SIZE" not in os.environ:
        from ..scale.trainer_group import run_trainer_group  # the trainer group as Ray actors (docs/scale.md)

        return run_trainer_group(recipe, train)
    return Trainer(recipe, algorithm).train()
