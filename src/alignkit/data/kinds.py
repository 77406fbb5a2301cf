"""Record kinds: one registration per kind holds its fields, its row check, its encoding and its inference.

A prompt or completion is a string, or a list of chat messages ``{"role": ..., "content": ...}`` rendered
with the tokenizer's chat template.

============  ======================================================================================
kind          fields
============  ======================================================================================
``sft``       ``prompt`` + ``completion``, or ``messages`` (assistant turns are trained; optional ``tools``)
``pair``      ``prompt`` + ``chosen`` + ``rejected`` (optional ``margin``)
``unpaired``  ``prompt`` + ``completion`` + ``label`` (bool: thumbs up / down)
``ranked``    ``prompt`` + ``completions`` (list) + ``scores`` or ``ranks`` (list, same length)
``prompt``    ``prompt`` only (every other field travels with it, top level, to reward functions)
``ratings``   per-attribute ratings (multi-objective reward models): ``prompt`` + ``completion`` +
              ``ratings: {attribute: value}`` (or one column per attribute), or a pair row
              ``prompt`` + ``chosen`` + ``rejected``; option ``attributes`` names the attributes
``steps``     step labels (process reward models): ``prompt`` + ``steps`` (or a text ``completion``
              cut by the option ``step_split``) + ``labels`` (one 0/1 or probability per step)
============  ======================================================================================

**Metadata travels.** A row's fields outside its kind's schema (a user or group id, a critique, a
system message, per-attribute scores, tool calls ...) are kept: a checked record holds them under
``"meta"``, the encoded example too, and the collate functions of :mod:`alignkit.data.collate` put them
in the batch under ``"meta"`` (a list per row, a tensor when every value is a number) for a loss to read.
The ``prompt`` kind keeps them at the top level instead (its historical contract with reward functions).

Adding a kind is one call::

    register_kind("critique", fields=("prompt", "completion", "critique"), required=("prompt", "completion", "critique"),
                  check=my_check, encode=my_encode)

``check(data, ctx) -> dict`` returns the fields alignkit uses (raising ``ctx.error(field, problem)``);
``encode(encoder, record) -> dict`` turns a checked record into token ids with an :class:`~alignkit.data.encode.Encoder`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.registry import Registry
from .errors import DataError, RowTooLong, check_messages, check_text, number_field
from .trajectory import check_conversation, check_reply, reply_mask, split_trajectory

DEFAULT_STEP_SPLIT = r"\n"
ENCODED_KEYS = ("row", "_row", "index", "prompt_ids")  # keys an encoded example adds to its row


@dataclass
class RowContext:
    """Where a row comes from (for error messages), the kind's options, and the fields a check read
    beyond the kind's declared ones (so that they are not also passed on as metadata)."""

    source: str
    row: int
    options: dict[str, Any] = field(default_factory=dict)
    consumed: set[str] = field(default_factory=set)

    def error(self, field: str | None, problem: str) -> DataError:
        return DataError(self.source, self.row, field, problem)

    def require(self, data: dict[str, Any], names: tuple[str, ...]) -> None:
        for name in names:
            if name not in data or data[name] is None:
                present = ", ".join(sorted(data)) or "none"
                raise self.error(name, f"missing (fields present: {present})")

    def text(self, data: dict[str, Any], name: str, allow_empty: bool = False) -> Any:
        check_text(data[name], self.source, self.row, name, allow_empty=allow_empty)
        return data[name]

    def number(self, value: Any, name: str) -> float:
        return number_field(value, self.source, self.row, name)


@dataclass(frozen=True)
class Kind:
    """One record kind. ``fields``: every field of its schema (others are metadata); ``required``: checked
    first, unless one of ``alternatives`` (other complete field sets, e.g. sft's ``messages``) is present;
    ``infer``: ``(order, predicate)`` rules for ``kind="auto"`` (lowest order first; none: never inferred);
    ``meta_at_top``: metadata stays at the top level of records and examples (the ``prompt`` kind)."""

    name: str
    fields: tuple[str, ...]
    required: tuple[str, ...]
    check: Callable[[dict[str, Any], RowContext], dict[str, Any]]
    encode: Callable[[Any, dict[str, Any]], dict[str, Any]]
    alternatives: tuple[tuple[str, ...], ...] = ()
    infer: tuple[tuple[int, Callable[[dict[str, Any]], bool]], ...] = ()
    meta_at_top: bool = False
    description: str = ""


RECORD_KINDS: Registry[Kind] = Registry("data kind")


def register_kind(name: str, *, fields: tuple[str, ...], required: tuple[str, ...], check, encode,
                  alternatives=(), infer=(), meta_at_top: bool = False, description: str = "") -> Kind:
    """Register a record kind (see the module docstring); returns its :class:`Kind`."""
    kind = Kind(name, tuple(fields), tuple(required), check, encode, tuple(alternatives), tuple(infer), meta_at_top, description)
    return RECORD_KINDS.register(name, kind)


def get_kind(name: str) -> Kind:
    """The registered kind ``name``; a ``ValueError`` lists the allowed names (and the closest one)."""
    if name not in RECORD_KINDS:
        raise ValueError(RECORD_KINDS.unknown(name))
    return RECORD_KINDS.get(name)


def kind_names() -> list[str]:
    return RECORD_KINDS.names()


def infer_kind(data: dict[str, Any]) -> str:
    """The record kind a row's fields describe (the first matching ``infer`` rule of every kind)."""
    rules = sorted((order, name, rule) for name, kind in RECORD_KINDS.items() for order, rule in kind.infer)
    for _, name, rule in rules:
        if rule(data):
            return name
    return "prompt"


def check_row(data: dict[str, Any], kind: str, source: str, row: int, **options: Any) -> dict[str, Any]:
    """Check one row against ``kind``; returns the fields alignkit uses, with the row's other fields
    under ``"meta"`` (top level for the ``prompt`` kind). ``options`` are the kind's settings (e.g.
    ``attributes`` for ``ratings``, ``step_split`` for ``steps``). Raises :class:`DataError`."""
    spec = get_kind(kind)
    ctx = RowContext(source, row, options)
    out = _checked_fields(spec, data, ctx)
    schema = set(spec.fields) | set(out) | ctx.consumed | {"_row"}
    extras = {k: v for k, v in data.items() if k not in schema}
    if extras:
        if spec.meta_at_top:
            out = {**extras, **out}
        else:
            out["meta"] = extras
    return out


def _checked_fields(spec: Kind, data: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    present = lambda names: all(n in data and data[n] is not None for n in names)  # noqa: E731
    if not any(present(alt) for alt in spec.alternatives):
        ctx.require(data, spec.required)
    return spec.check(data, ctx)


# --------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------
def _check_sft(data: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    if "messages" in data:
        check_messages(data["messages"], ctx.source, ctx.row, "messages")
        messages = data["messages"]
        if not any(m["role"] == "assistant" for m in messages):
            raise ctx.error("messages", "has no assistant turn to train on")
        check_conversation(messages, "messages", ctx.source, ctx.row)
        tools = data.get("tools")
        if tools is None:
            return {"messages": messages}
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise ctx.error("tools", "expected a list of tool schemas ({type: function, function: {name, description, parameters}})")
        return {"messages": messages, "tools": tools}
    out = {"prompt": ctx.text(data, "prompt"), "completion": ctx.text(data, "completion")}
    check_reply(out["prompt"], out["completion"], "completion", ctx.source, ctx.row)
    return out


def _check_unpaired(data: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    if "messages" in data and "prompt" not in data:  # a whole trajectory: the prompt is what precedes its first assistant turn
        check_messages(data["messages"], ctx.source, ctx.row, "messages")
        check_conversation(data["messages"], "messages", ctx.source, ctx.row)
        prompt, completion = split_trajectory(data["messages"], ctx.source, ctx.row)
        data = {**data, "prompt": prompt, "completion": completion}
    out = {"prompt": ctx.text(data, "prompt"), "completion": ctx.text(data, "completion")}
    check_reply(out["prompt"], out["completion"], "completion", ctx.source, ctx.row)
    label = data["label"]
    if isinstance(label, str) and label.lower() in ("true", "false", "1", "0"):
        label = label.lower() in ("true", "1")
    if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        label = bool(label)
    if not isinstance(label, bool):
        raise ctx.error("label", f"expected true/false, got {data['label']!r}")
    out["label"] = label
    return out


def _check_pair(data: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    out = {"prompt": ctx.text(data, "prompt"), "chosen": ctx.text(data, "chosen"), "rejected": ctx.text(data, "rejected")}
    if data["chosen"] == data["rejected"]:
        raise ctx.error("rejected", "is identical to 'chosen' (the pair carries no preference)")
    for name in ("chosen", "rejected"):
        check_reply(out["prompt"], out[name], name, ctx.source, ctx.row)
    if data.get("margin") is not None:
        out["margin"] = ctx.number(data["margin"], "margin")
    return out


def _check_ranked(data: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    prompt = ctx.text(data, "prompt")
    completions = data["completions"]
    if not isinstance(completions, list) or len(completions) < 2:
        raise ctx.error("completions", "expected a list of at least two completions")
    for j, c in enumerate(completions):
        check_text(c, ctx.source, ctx.row, f"completions[{j}]")
    key = "scores" if "scores" in data else "ranks" if "ranks" in data else None
    if key is None:
        raise ctx.error("scores", "missing (a ranked row needs 'scores' or 'ranks')")
    values = data[key]
    if not isinstance(values, list) or len(values) != len(completions):
        raise ctx.error(key, f"expected a list of {len(completions)} numbers, one per completion")
    values = [ctx.number(v, f"{key}[{j}]") for j, v in enumerate(values)]
    seen: dict[str, int] = {}
    for j, c in enumerate(completions):
        text = repr(c)
        if text in seen:
            raise ctx.error(f"completions[{j}]", f"is identical to completions[{seen[text]}] (a ranking of the same completion twice carries no preference)")
        seen[text] = j
    if len(set(values)) == 1:
        raise ctx.error(key, f"every completion has the same {key[:-1]} ({values[0]:g}): the ranking carries no preference")
    # Normalised to scores (higher is better).
    return {"prompt": prompt, "completions": completions, "scores": values if key == "scores" else [-v for v in values]}


def _check_prompt(data: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    return {"prompt": ctx.text(data, "prompt", allow_empty=True)}


def _check_ratings(data: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    attributes = list(ctx.options.get("attributes") or ())
    if not attributes:
        raise ValueError("the 'ratings' data kind needs the attribute names (option attributes=[...], reward.attributes)")
    is_pair, is_rating = "chosen" in data or "rejected" in data, "completion" in data
    if is_pair and is_rating:
        raise ctx.error(None, "a row is a ratings row (completion + ratings) or a pair row (chosen + rejected), not both")
    if is_pair:
        return {"mo": "pair", **_checked_fields(RECORD_KINDS.get("pair"), data, ctx)}
    if not is_rating:
        raise ctx.error(None, "expected a ratings row (completion + ratings) or a pair row (chosen + rejected)")
    ratings = data.get("ratings")
    if ratings is None:  # one column per attribute
        ratings = {a: data[a] for a in attributes if a in data}
        ctx.consumed.update(ratings)
    if not isinstance(ratings, dict):
        raise ctx.error("ratings", f"expected a mapping {{attribute: value}}, got {type(ratings).__name__}")
    unknown = sorted(set(ratings) - set(attributes))
    if unknown:
        raise ctx.error("ratings", f"unknown attribute(s) {', '.join(unknown)}; reward.attributes: {', '.join(attributes)}")
    values, mask = [], []
    for a in attributes:
        v = ratings.get(a)
        values.append(0.0 if v is None else ctx.number(v, f"ratings.{a}"))
        mask.append(0.0 if v is None else 1.0)
    if not any(mask):
        raise ctx.error("ratings", f"no rating for any attribute ({', '.join(attributes)})")
    out = _checked_fields(RECORD_KINDS.get("sft"), {"prompt": data["prompt"], "completion": data["completion"]}, ctx)
    return {"mo": "ratings", **out, "ratings": values, "rating_mask": mask}


def _check_steps(data: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    steps = data.get("steps")
    if steps is None:
        if not isinstance(data.get("completion"), str):
            raise ctx.error("steps", "missing (a process row needs 'steps', or a text 'completion' cut by reward.step_split)")
        steps = split_steps(data["completion"], ctx.options.get("step_split") or DEFAULT_STEP_SPLIT)
    if not isinstance(steps, list) or not steps or not all(isinstance(x, str) and x.strip() for x in steps):
        raise ctx.error("steps", "expected a non-empty list of non-empty strings")
    labels = data.get("labels")
    if not isinstance(labels, list) or len(labels) != len(steps):
        raise ctx.error("labels", f"expected a list of {len(steps)} labels, one per step")
    values = []
    for j, v in enumerate(labels):
        x = float(v) if isinstance(v, bool) else ctx.number(v, f"labels[{j}]")
        if not 0.0 <= x <= 1.0:
            raise ctx.error(f"labels[{j}]", f"expected 0/1 (or a probability), got {v!r}")
        values.append(x)
    return {"prompt": data["prompt"], "steps": steps, "labels": values}


# --------------------------------------------------------------------------------------------------
# encoders: (encoder, record) -> example
# --------------------------------------------------------------------------------------------------
def _completions(encoder: Any, record: dict[str, Any], fields: list[str]) -> tuple[list[int], list[list[int]]]:
    """The prompt's ids and each named completion's ids, fitted to ``max_length``."""
    row = record.get("_row", 0)
    prompt = encoder.prompt_ids(record["prompt"])
    completions = [encoder.completion_ids(record["prompt"], prompt, record[f], row, f) for f in fields]
    return encoder.fit(prompt, completions, row)


def _reply_masks(encoder: Any, record: dict[str, Any], fields: list[str], fitted: list[list[int]]) -> dict[str, list[int]]:
    """``{field}_mask`` for each message-list reply with tool or user turns (1 on assistant tokens), cut to the
    reply's fitted (possibly right-truncated) length; text replies and single assistant turns get none."""
    out = {}
    for name, ids in zip(fields, fitted):
        mask = reply_mask(encoder, record["prompt"], record[name], record.get("_row", 0))
        if mask is not None:
            out[f"{name}_mask"] = mask[: len(ids)]
    return out


def _encode_sft(encoder: Any, record: dict[str, Any]) -> dict[str, Any]:
    row = record.get("_row", 0)
    if "messages" in record:
        ids, mask = encoder.conversation(record["messages"], row, tools=record.get("tools"))
        if len(ids) > encoder.max_length:
            if encoder.truncation in ("error", "skip"):
                raise RowTooLong(encoder.source, row, "messages", f"{len(ids)} tokens is longer than max_length={encoder.max_length}")
            m = encoder.max_length
            ids, mask = (ids[-m:], mask[-m:]) if encoder.truncation == "left" else (ids[:m], mask[:m])
        return {"input_ids": ids, "loss_mask": mask, "row": row}
    prompt, (completion,) = _completions(encoder, record, ["completion"])
    mask = _reply_masks(encoder, record, ["completion"], [completion]).get("completion_mask", [1] * len(completion))
    return {"prompt_ids": prompt, "row": row, "input_ids": prompt + completion, "loss_mask": [0] * len(prompt) + mask}


def _encode_unpaired(encoder: Any, record: dict[str, Any]) -> dict[str, Any]:
    return {**_encode_sft(encoder, record), "label": record["label"]}


def _encode_pair(encoder: Any, record: dict[str, Any]) -> dict[str, Any]:
    prompt, (chosen, rejected) = _completions(encoder, record, ["chosen", "rejected"])
    out = {"prompt_ids": prompt, "row": record.get("_row", 0), "chosen_ids": chosen, "rejected_ids": rejected}
    out.update(_reply_masks(encoder, record, ["chosen", "rejected"], [chosen, rejected]))  # trajectories: tool/user turns untrained
    if "margin" in record:
        out["margin"] = record["margin"]
    return out


def _encode_ranked(encoder: Any, record: dict[str, Any]) -> dict[str, Any]:
    row = record.get("_row", 0)
    prompt = encoder.prompt_ids(record["prompt"])
    completions = [encoder.completion_ids(record["prompt"], prompt, c, row, f"completions[{j}]") for j, c in enumerate(record["completions"])]
    prompt, completions = encoder.fit(prompt, completions, row)
    return {"prompt_ids": prompt, "row": row, "completion_ids": completions, "scores": record["scores"]}


def _encode_prompt(encoder: Any, record: dict[str, Any]) -> dict[str, Any]:
    row = record.get("_row", 0)
    prompt = encoder.prompt_ids(record["prompt"])
    if len(prompt) > encoder.max_length:
        if encoder.truncation in ("error", "skip"):
            raise RowTooLong(encoder.source, row, "prompt", f"{len(prompt)} tokens is longer than max_length={encoder.max_length}")
        prompt = prompt[-encoder.max_length :]
    extra = {k: v for k, v in record.items() if k not in ("_row", "prompt_ids")}
    return {**extra, "prompt_ids": prompt, "row": row}


def _encode_ratings(encoder: Any, record: dict[str, Any]) -> dict[str, Any]:
    row = record.get("_row", 0)
    if record["mo"] == "pair":
        out = _encode_pair(encoder, record)
        return {"mo": "pair", "prompt_ids": out["prompt_ids"], "chosen_ids": out["chosen_ids"], "rejected_ids": out["rejected_ids"], "row": row}
    out = _encode_sft(encoder, record)
    return {"mo": "ratings", "input_ids": out["input_ids"], "prompt_len": len(out["prompt_ids"]),
            "ratings": record["ratings"], "rating_mask": record["rating_mask"], "row": row}


def _encode_steps(encoder: Any, record: dict[str, Any]) -> dict[str, Any]:
    row = record.get("_row", 0)
    values = list(record["labels"])
    prompt_ids, ids, ends = encode_steps(encoder, record["prompt"], record["steps"])
    m = encoder.max_length
    if len(ids) > m:
        if encoder.truncation in ("error", "skip"):
            raise RowTooLong(encoder.source, row, "steps",
                             f"{len(ids)} tokens is longer than max_length={m} "
                             "(set data.truncation to left or right to drop the steps that do not fit)")
        if encoder.truncation == "left":
            cut = min(len(ids) - m, max(len(prompt_ids) - 1, 0))
            ids, ends = ids[cut:], [j - cut for j in ends]
        keep = [j for j, end in enumerate(ends) if end < m]
        if not keep:
            raise RowTooLong(encoder.source, row, "steps", f"no step fits max_length={m}")
        ids, ends, values = ids[: ends[keep[-1]] + 1], ends[: len(keep)], values[: len(keep)]
    return {"input_ids": ids, "step_ends": ends, "step_labels": values, "row": row}


# --------------------------------------------------------------------------------------------------
# steps of a process row
# --------------------------------------------------------------------------------------------------
def split_steps(text: str, pattern: str) -> list[str]:
    """Cut ``text`` after every match of the regex ``pattern`` (zero-width patterns such as
    ``(?= and )`` cut before a word); empty pieces are dropped, so ``"".join(steps) == text``."""
    cuts = sorted({m.end() for m in re.finditer(pattern, text)} | {len(text)})
    steps, start = [], 0
    for cut in cuts:
        if cut > start:
            steps.append(text[start:cut])
            start = cut
    return steps


def encode_steps(encoder: Any, prompt: Any, steps: list[str]) -> tuple[list[int], list[int], list[int]]:
    """``(prompt_ids, ids, ends)``: the prompt's tokens, then each step tokenized on its own and
    appended (no EOS); ``ends[j]`` is the position of step j's last token in ``ids``."""
    tok = encoder.tokenizer
    prompt_ids = encoder.prompt_ids(prompt)
    ids, ends = list(prompt_ids), []
    for step in steps:
        step_ids = tok(step, add_special_tokens=False)["input_ids"]
        if not step_ids:
            raise ValueError(f"step {step!r} has no tokens")
        ids.extend(step_ids)
        ends.append(len(ids) - 1)
    return prompt_ids, ids, ends


# --------------------------------------------------------------------------------------------------
# the built-in kinds
# --------------------------------------------------------------------------------------------------
register_kind("sft", fields=("prompt", "completion", "messages", "tools"), required=("prompt", "completion"), alternatives=(("messages",),),
              check=_check_sft, encode=_encode_sft, infer=((0, lambda d: "messages" in d), (40, lambda d: "completion" in d)),
              description="prompt + completion, or messages")
register_kind("pair", fields=("prompt", "chosen", "rejected", "margin"), required=("prompt", "chosen", "rejected"),
              check=_check_pair, encode=_encode_pair, infer=((10, lambda d: "chosen" in d or "rejected" in d),),
              description="prompt + chosen + rejected (optional margin)")
register_kind("unpaired", fields=("prompt", "completion", "label", "messages"), required=("prompt", "completion", "label"),
              alternatives=(("messages", "label"),), check=_check_unpaired, encode=_encode_unpaired, infer=((30, lambda d: "label" in d),),
              description="prompt + completion + label")
register_kind("ranked", fields=("prompt", "completions", "scores", "ranks"), required=("prompt", "completions"),
              check=_check_ranked, encode=_encode_ranked, infer=((20, lambda d: "completions" in d),),
              description="prompt + completions + scores or ranks")
register_kind("prompt", fields=("prompt",), required=("prompt",), check=_check_prompt, encode=_encode_prompt,
              infer=((100, lambda d: True),), meta_at_top=True, description="prompt only; other fields travel at the top level")
register_kind("ratings", fields=("prompt", "completion", "ratings", "chosen", "rejected", "margin"), required=("prompt",),
              check=_check_ratings, encode=_encode_ratings, description="multi-objective: ratings rows and pair rows")
register_kind("steps", fields=("prompt", "steps", "completion", "labels"), required=("prompt",),
              check=_check_steps, encode=_encode_steps, description="process: steps (or a completion) + per-step labels")


# --------------------------------------------------------------------------------------------------
# win_rate: one sample with its estimated win probability against the policy (SPPO)
# --------------------------------------------------------------------------------------------------
def _check_win_rate(data: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    out = {"prompt": ctx.text(data, "prompt"), "completion": ctx.text(data, "completion")}
    value = ctx.number(data["win_rate"], "win_rate")
    if not 0.0 <= value <= 1.0:
        raise ctx.error("win_rate", f"expected a probability in [0, 1], got {data['win_rate']!r}")
    out["win_rate"] = value
    return out


def _encode_win_rate(encoder: Any, record: dict[str, Any]) -> dict[str, Any]:
    return {**_encode_sft(encoder, record), "win_rate": record["win_rate"]}


register_kind("win_rate", fields=("prompt", "completion", "win_rate"), required=("prompt", "completion", "win_rate"),
              check=_check_win_rate, encode=_encode_win_rate, description="prompt + completion + win_rate (estimated P(y ≻ π_t) in [0, 1], SPPO)")


from . import feedback_kinds  # noqa: E402,F401  (registers the critique and spans kinds and the system format)
