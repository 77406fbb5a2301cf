"""The whole recipe (:class:`Recipe`), YAML + dotted overrides (:func:`load_recipe`), :class:`ConfigError`, and the
options reference (``alignkit options``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from .methods import DPOConfig, FeedbackConfig, IterateConfig, ListwiseConfig, RewardConfig, SPPOConfig, UnpairedConfig
from .rl import RLConfig
from .sections import DataConfig, ModelConfig, ScaleConfig, Section, SFTConfig, TaskConfig, TrainConfig

ALGORITHMS = ("sft", "dpo", "kto", "pro", "reward", "rl", "sppo", "feedback")


class Recipe(Section):
    algorithm: Literal["sft", "dpo", "kto", "pro", "reward", "rl", "sppo", "feedback"]
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    unpaired: UnpairedConfig = Field(default_factory=UnpairedConfig)
    listwise: ListwiseConfig = Field(default_factory=ListwiseConfig)
    sppo: SPPOConfig = Field(default_factory=SPPOConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description="algorithm feedback: Chain of Hindsight, CUT, ILF, C-RLFT, reward-augmented DPO")
    iterate: IterateConfig | None = Field(None, description="iterative alignment (alignkit iterate): rounds of sample, judge, build, train; null: not iterative")
    scale: ScaleConfig = Field(default_factory=ScaleConfig, description="orchestration beyond one process: Ray rollout and reward workers (docs/scale.md)")

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        t = self.train
        if t.distributed.startswith("deepspeed") and t.nonfinite == "skip":
            raise ValueError(f"train.distributed={t.distributed} needs train.nonfinite=stop (DeepSpeed's step cannot be skipped); docs/scale.md")
        if t.micro_batch_size is not None and t.batch_size % t.micro_batch_size:
            raise ValueError(f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch_size ({t.micro_batch_size})")
        if self.scale.backend == "ray":
            if self.algorithm != "rl" or self.iterate is not None:
                raise ValueError(f"scale.backend=ray drives online RL's rollouts (algorithm: rl, alignkit train); got algorithm: {self.algorithm}"
                                 + (" with an iterate section" if self.iterate is not None else "") + " (docs/scale.md)")
            if self.rl.env is not None or self.rl.sampling.behavior != "policy":
                raise ValueError("scale.backend=ray samples single completions from the policy: leave rl.env unset and rl.sampling.behavior=policy (docs/scale.md)")
            if self.rl.sampling.precision != "model":
                raise ValueError("rl.sampling.precision=bf16 is a setting of the local alignkit decoder; with scale.backend=ray leave rl.sampling.precision=model")
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir.format(algorithm=self.algorithm))


class ConfigError(ValueError):
    """A recipe problem; the message names the key and what is allowed."""


def _allowed(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Field names of the section that ``path`` points into."""
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        candidates = [annotation, *get_args(annotation)]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _format(error: ValidationError, source: str) -> str:
    lines = []
    for e in error.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<recipe>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed(Recipe, loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"unknown key; allowed: {', '.join(allowed)}" + (f" (did you mean '{hint[0]}'?)" if hint else "")
        elif e["type"] == "literal_error":
            msg = f"got {e['input']!r}; {e['msg'].replace('Input should be', 'allowed:')}"
        else:
            msg = f"{e['msg']} (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else e["msg"]
        lines.append(f"{source}: {key}: {msg}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.sub=value")
    key, value = item.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as e:
        problem = str(getattr(e, "problem", None) or e).strip()
        raise ConfigError(f"override '{item}': the value is not valid YAML ({problem})") from None
    return key.strip().split("."), parsed


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[path[-1]] = value
    return data


def load_recipe(source: str | Path | dict | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (YAML file path or dict), apply dotted overrides, validate."""
    if source is None:
        data, name = {}, "<overrides>"
    elif isinstance(source, dict):
        data, name = dict(source), "<dict>"
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"{path}: no such recipe file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections (algorithm, model, data, train, ...)")
        name = str(path)
    data = apply_overrides(data, list(overrides or []))
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, name)) from None


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))


# --------------------------------------------------------------------------------------------------
# the options reference (``alignkit options``, docs/options.md): read off the typed sections above
# --------------------------------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin in (list, tuple, dict):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _sections(model: type[BaseModel], prefix: str) -> list[tuple[str, type[BaseModel]]]:
    """(dotted name, section class) of ``model``'s sub-sections, depth first, in declaration order."""
    import typing

    out = []
    for name, field in model.model_fields.items():
        for candidate in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                dotted = f"{prefix}.{name}" if prefix else name
                out += [(dotted, candidate), *_sections(candidate, dotted)]
    return out


def options_reference(section: str | None = None) -> str:
    """Every recipe option (key, type, default, meaning) as Markdown, for one section (``"rl"``,
    ``"rl.sampling.vllm"``) or all of them; raises ConfigError for an unknown section."""
    sections = _sections(Recipe, "")
    if section is not None:
        chosen = [s for s in sections if s[0] == section or s[0].startswith(section + ".")]
        if not chosen:
            names = [s[0] for s in sections]
            hint = difflib.get_close_matches(section, names, n=1)
            raise ConfigError(f"no recipe section '{section}'" + (f" (did you mean '{hint[0]}'?)" if hint else "") + f"; sections: {', '.join(names)}")
        sections = chosen
    lines = []
    if section is None:
        lines += ["# Recipe options", "", "Every key a recipe (YAML) or a dotted override (`alignkit train recipe.yaml rl.kl.beta=0.1`)",
                  "can set. Generated from `alignkit/config/` by `alignkit options` (a test keeps this file in step).", "",
                  f"`algorithm` (top level): one of {', '.join(f'`{a}`' for a in ALGORITHMS)}.", ""]
    for name, model in sections:
        doc = " ".join((model.__doc__ or "").split())
        lines += [f"## `{name}`", "", *( [doc, ""] if doc else []), "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, field in model.model_fields.items():
            kind = _type_name(field.annotation)
            if kind == "section":
                default = f"see `{name}.{key}`"
            elif "section" in kind.split(" or "):
                default = f"`{field.default}` (a section: `{name}.{key}`)"
            elif field.default_factory is not None:
                default = f"`{field.default_factory()}`"
            elif field.is_required():
                default = "required"
            else:
                default = f"`{field.default}`"
            meaning = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {kind} | {default} | {meaning} |")
        lines.append("")
    return "\n".join(lines)
