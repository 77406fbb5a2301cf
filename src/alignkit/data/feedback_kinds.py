"""Record kinds for language feedback, and the ``system`` format for conditioned rows.

============  ======================================================================================
kind          fields
============  ======================================================================================
``critique``  ``prompt`` + ``completion`` + ``critique`` (a natural-language judgment of the completion);
              optional ``revision`` (a better completion the critique asks for), ``label`` (true: the
              judgment is positive, the completion is acceptable; default false) and ``score`` (a number)
``spans``     ``prompt`` + ``completion`` (text) + ``spans``: a list of ``{start, end, label}`` character
              spans of the completion (``end`` exclusive) marked ``good`` or ``bad`` (or +1 / −1);
              optional ``critique`` (the judgment the spans ground)
============  ======================================================================================

Both encode like an ``sft`` row of ``prompt`` + ``completion`` (the completion's tokens are the targets)
and keep their texts on the example (``example["text"]``: prompt, completion, critique, revision), because
the feedback methods (:mod:`alignkit.algorithms.feedback`) rebuild sequences around them: a hindsight
sequence, a refinement prompt, a judgment-conditioned context. A ``spans`` example also carries
``token_labels``, one value per completion token (+1 inside a good span, −1 inside a bad one, 0 elsewhere;
a token overlapping a bad span is bad), found from the tokenizer's character offsets. Spans need a text
prompt and completion (a chat-rendered reply's tokens have no offsets into the row's text).

**The ``system`` format** (``data.format: system``, never picked by ``auto``): rows of any kind with a
``system`` field — a system message, a value profile or a principle list — get it folded into the prompt
before the kind's check. A chat prompt (or an ``sft`` row's ``messages``) gains a first ``system`` message
(refused when it already has one); a text prompt becomes ``"{system}\\n{prompt}"``. A list of principles
becomes one line per principle (``- principle``), a mapping (a value profile such as ``{tone: warm,
length: short}``) one ``key: value`` line per entry, in the row's order. The field also stays on the row as
metadata (``batch["meta"]["system"]``), so a loss or an evaluation can group by profile.
"""

from __future__ import annotations

from typing import Any

from .errors import check_text
from .formats import FORMATS, FormatContext, register_format
from .kinds import RowContext, _completions, _encode_sft, register_kind

__all__ = ["SPAN_LABELS", "char_offsets", "render_system", "system_prompt", "token_labels"]

SPAN_LABELS = {"good": 1, "bad": -1, 1: 1, -1: -1, "+1": 1, "-1": -1, "positive": 1, "negative": -1}


# --------------------------------------------------------------------------------------------------
# critique
# --------------------------------------------------------------------------------------------------
def _label(data: dict[str, Any], ctx: RowContext) -> bool:
    value = data.get("label", False)
    if isinstance(value, str) and value.lower() in ("true", "false", "good", "bad"):
        value = value.lower() in ("true", "good")
    if not isinstance(value, bool):
        raise ctx.error("label", f"expected true (a positive judgment) or false, got {data['label']!r}")
    return value


def _check_critique(data: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    out = {"prompt": ctx.text(data, "prompt"), "completion": ctx.text(data, "completion")}
    if not isinstance(data["critique"], str) or not data["critique"].strip():
        raise ctx.error("critique", "expected a non-empty string (the natural-language judgment of the completion)")
    out["critique"] = data["critique"]
    if data.get("revision") is not None:
        out["revision"] = ctx.text(data, "revision")
        if out["revision"] == out["completion"]:
            raise ctx.error("revision", "is identical to 'completion' (a revision must change it)")
    out["label"] = _label(data, ctx)
    if data.get("score") is not None:
        out["score"] = ctx.number(data["score"], "score")
    return out


def _texts(record: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: record[name] for name in names if name in record}


def _encode_critique(encoder: Any, record: dict[str, Any]) -> dict[str, Any]:
    out = _encode_sft(encoder, record)
    out["text"] = _texts(record, ("prompt", "completion", "critique", "revision"))
    out["label"] = record["label"]
    if "revision" in record:
        _, (revision,) = _completions(encoder, record, ["revision"])
        out["revision_ids"] = revision
    if "score" in record:
        out["score"] = record["score"]
    return out


# --------------------------------------------------------------------------------------------------
# spans
# --------------------------------------------------------------------------------------------------
def _check_spans(data: dict[str, Any], ctx: RowContext) -> dict[str, Any]:
    out = {"prompt": ctx.text(data, "prompt"), "completion": data["completion"]}
    if not isinstance(data["completion"], str) or not isinstance(data["prompt"], str):
        field = "completion" if not isinstance(data["completion"], str) else "prompt"
        raise ctx.error(field, "span annotations need a text prompt and completion (character offsets into the completion's own tokens)")
    check_text(data["completion"], ctx.source, ctx.row, "completion")
    spans = data["spans"]
    if not isinstance(spans, list):
        raise ctx.error("spans", f"expected a list of {{start, end, label}} spans, got {type(spans).__name__}")
    n = len(data["completion"])
    checked = []
    for j, span in enumerate(spans):
        name = f"spans[{j}]"
        if not isinstance(span, dict) or not {"start", "end", "label"} <= set(span):
            raise ctx.error(name, "expected {start, end, label}")
        start, end = span["start"], span["end"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)) or not 0 <= start < end <= n:
            raise ctx.error(name, f"expected character offsets 0 <= start < end <= {n} (the completion's length), got {start!r}..{end!r}")
        label = span["label"]
        if isinstance(label, bool) or label not in SPAN_LABELS:
            raise ctx.error(f"{name}.label", f"expected good or bad (or +1 / -1), got {label!r}")
        checked.append({"start": start, "end": end, "label": SPAN_LABELS[label]})
    for a in checked:
        for b in checked:
            if a["label"] > b["label"] and a["start"] < b["end"] and b["start"] < a["end"]:
                raise ctx.error("spans", f"a good span ({a['start']}..{a['end']}) overlaps a bad one ({b['start']}..{b['end']})")
    out["spans"] = checked
    if data.get("critique") is not None:
        if not isinstance(data["critique"], str) or not data["critique"].strip():
            raise ctx.error("critique", "expected a non-empty string")
        out["critique"] = data["critique"]
    return out


def char_offsets(tokenizer: Any, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of each token of ``ids`` (the tokens of ``text`` without special
    tokens): the fast tokenizer's offsets when they tile the text, else from decoding growing prefixes."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if enc["input_ids"] == ids:
            return [tuple(o) for o in enc["offset_mapping"]]
    offsets, start = [], 0
    for i in range(len(ids)):
        end = len(tokenizer.decode(ids[: i + 1]))
        offsets.append((start, end))
        start = end
    return offsets


def token_labels(offsets: list[tuple[int, int]], spans: list[dict[str, int]]) -> list[int]:
    """One label per token: −1 if it overlaps a bad span, else +1 if it overlaps a good span, else 0."""
    labels = []
    for start, end in offsets:
        hit = [s["label"] for s in spans if start < s["end"] and s["start"] < end]
        labels.append(-1 if -1 in hit else 1 if hit else 0)
    return labels


def _encode_spans(encoder: Any, record: dict[str, Any]) -> dict[str, Any]:
    out = _encode_sft(encoder, record)
    tok = encoder.tokenizer
    ids = tok(record["completion"], add_special_tokens=False)["input_ids"]
    labels = token_labels(char_offsets(tok, record["completion"], ids), record["spans"]) + [0]  # the EOS is neutral
    n_completion = sum(out["loss_mask"])
    out["token_labels"] = labels[:n_completion]  # a right-truncated completion keeps its first labels
    out["text"] = _texts(record, ("prompt", "completion", "critique"))
    out["spans"] = record["spans"]
    return out


register_kind("critique", fields=("prompt", "completion", "critique", "revision", "label", "score"), required=("prompt", "completion", "critique"),
              check=_check_critique, encode=_encode_critique, infer=((25, lambda d: "critique" in d and "spans" not in d and "chosen" not in d),),
              description="prompt + completion + critique (optional revision, label, score)")
register_kind("spans", fields=("prompt", "completion", "spans", "critique"), required=("prompt", "completion", "spans"),
              check=_check_spans, encode=_encode_spans, infer=((24, lambda d: "spans" in d and "chosen" not in d),),
              description="prompt + completion + character spans marked good/bad (optional critique)")


# --------------------------------------------------------------------------------------------------
# the system format: a system message, value profile or principle list folded into the prompt
# --------------------------------------------------------------------------------------------------
def render_system(value: Any, ctx: FormatContext | None = None) -> str:
    """The text of a ``system`` field: a string as is, a list as ``- item`` lines, a mapping as ``key: value`` lines."""
    def bad(problem: str):
        if ctx is None:
            return ValueError(f"system: {problem}")
        return ctx.error("system", problem)

    if isinstance(value, str):
        if not value.strip():
            raise bad("is empty")
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return "\n".join(f"- {v}" for v in value)
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        return "\n".join(f"{k}: {v}" for k, v in value.items())
    raise bad(f"expected a string, a list of principles (strings) or a profile mapping, got {value!r}")


def system_prompt(system: Any, prompt: Any, ctx: FormatContext | None = None) -> Any:
    """``prompt`` conditioned on ``system``: a first system message for a chat prompt, else ``"{system}\\n{prompt}"``."""
    text = render_system(system, ctx)
    if isinstance(prompt, list):
        if prompt and isinstance(prompt[0], dict) and prompt[0].get("role") == "system":
            problem = "the conversation already starts with a system message"
            raise ctx.error("system", problem) if ctx is not None else ValueError(problem)
        return [{"role": "system", "content": text}, *prompt]
    return f"{text}\n{prompt}"


def _convert_system(data: dict[str, Any], ctx: FormatContext) -> dict[str, Any]:
    out = FORMATS.get("alignkit").convert(data, ctx)  # messages normalised as in alignkit's own format
    if out.get("system") is None:
        return out
    data = out
    out = dict(data)
    if "messages" in data and "prompt" not in data:
        out["messages"] = system_prompt(data["system"], data["messages"], ctx)
    elif "prompt" in data:
        out["prompt"] = system_prompt(data["system"], data["prompt"], ctx)
    else:
        raise ctx.error("system", "a row with a system field needs a prompt (or messages) to condition")
    return out


register_format("system", detect=lambda d: False, convert=_convert_system, order=900, family="alignkit",
                description="alignkit's fields plus a system message / value profile / principle list, folded into the prompt")
