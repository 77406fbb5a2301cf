"""Public data formats, read as their users expect, converted to rows of alignkit's record kinds.

A format is one registration in :data:`FORMATS`: ``detect(row) -> bool`` (does a row look like it?),
``convert(row, ctx) -> row`` (the same row in alignkit's field names: ``prompt``/``chosen``/``rejected``,
``prompt``/``completion``, ``messages`` ...; every field it does not use is carried along, so it ends up
as metadata) and a ``family`` (formats of one family may share a source). ``data.format: auto`` takes
each source's format from its first row (:func:`detect_format`) and refuses a row of another family,
naming the file and both rows; a name converts every row with that format.

==================  =========================================================================================
format              how a row is read
==================  =========================================================================================
``alignkit``        alignkit's own fields (``docs/data.md``); OpenAI-style ``messages`` are normalised
``openai``          ``messages`` with ``system`` turns, assistant ``tool_calls``, ``tool`` results, ``tools``
``ultrafeedback``   ``prompt`` + ``chosen``/``rejected`` as whole conversations: the prompt turns are stripped
``implicit_prompt`` ``chosen``/``rejected`` whole conversations, no ``prompt``: the shared prefix is the prompt
``hh_raw``          Anthropic HH text ``\\n\\nHuman: ... \\n\\nAssistant: ...``: split on the last Assistant turn
``sharegpt``        ``conversations`` of ``{from, value}`` (optional ``chosen``/``rejected`` turns, ``system``)
``alpaca``          ``instruction`` + ``input`` + ``output`` (or ``chosen``/``rejected``)
==================  =========================================================================================

A pair read from a conversation format for an ``sft`` run trains on the chosen reply. Adding a format
is one call::

    register_format("myformat", detect=lambda row: "question" in row, convert=my_convert, order=50)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.registry import Registry
from .errors import CHAT_ROLES, DataError


@dataclass
class FormatContext:
    """Where a row comes from (for error messages) and the record kind it will be checked as
    (``auto`` when the kind is inferred from the converted row)."""

    source: str
    row: int
    kind: str = "auto"

    def error(self, field_name: str | None, problem: str) -> DataError:
        return DataError(self.source, self.row, field_name, problem)


@dataclass(frozen=True)
class Format:
    """One data format: ``detect`` (order: lowest first in ``auto``), ``convert`` and its ``family``."""

    name: str
    detect: Callable[[dict[str, Any]], bool]
    convert: Callable[[dict[str, Any], FormatContext], dict[str, Any]]
    order: int = 50
    family: str = ""
    description: str = field(default="", compare=False)


FORMATS: Registry[Format] = Registry("data format")


def register_format(name: str, *, detect, convert, order: int = 50, family: str = "", description: str = "") -> Format:
    """Register a data format (see the module docstring); returns its :class:`Format`."""
    return FORMATS.register(name, Format(name, detect, convert, order, family or name, description))


def format_names() -> list[str]:
    return FORMATS.names()


def get_format(name: str) -> Format:
    """The registered format ``name``; a ``ValueError`` lists the allowed names (``auto`` too)."""
    if name not in FORMATS:
        raise ValueError("data.format: " + FORMATS.unknown(name).replace("; allowed: ", "; allowed: auto, "))
    return FORMATS.get(name)


def detect_format(row: dict[str, Any]) -> Format:
    """The first format (lowest ``order``) whose ``detect`` accepts ``row``; ``alignkit`` otherwise."""
    for fmt in sorted((f for _, f in FORMATS.items()), key=lambda f: (f.order, f.name)):
        if fmt.detect(row):
            return fmt
    return FORMATS.get("alignkit")


class FormatReader:
    """Converts the rows of one source: ``name="auto"`` fixes the format on the first row it sees and
    refuses a later row of another family (naming both rows); otherwise every row uses ``name``."""

    def __init__(self, source: str, name: str = "auto", kind: str = "auto"):
        self.source, self.kind = source, kind
        self.auto = name == "auto"
        self.format: Format | None = None if self.auto else get_format(name)
        self.first_row: int | None = None

    def convert(self, row: int, data: dict[str, Any]) -> dict[str, Any]:
        ctx = FormatContext(self.source, row, self.kind)
        fmt = self.format
        if self.auto:
            fmt = detect_format(data)
            if self.format is None:
                self.format, self.first_row = fmt, row
            elif fmt.family != self.format.family:
                raise ctx.error(None, f"looks like the '{fmt.name}' format, but the source's first row (row {self.first_row}) is "
                                      f"'{self.format.name}': rows of one source must share a format (fields here: {', '.join(sorted(data)) or 'none'})")
        return fmt.convert(data, ctx)


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------
def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def _rest(data: dict[str, Any], *used: str) -> dict[str, Any]:
    """The row's fields a conversion did not use (they travel on as metadata)."""
    return {k: v for k, v in data.items() if k not in used}


def _drop_nulls(value: Any) -> Any:
    """Columnar sources (Parquet, Hub datasets) give every struct every key, null where a row lacks it:
    those keys are removed so that a template's ``is defined`` tests see what the row really holds."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def normalise_messages(messages: Any, ctx: FormatContext, name: str) -> Any:
    """OpenAI-style messages as chat templates expect them: null keys removed, ``content`` parts
    (``[{"type": "text", "text": ...}]``) joined, a tool call's ``content: null`` as ``""``, and JSON-string
    tool-call ``arguments`` decoded to objects. Anything that is not a message list is returned as is
    (the kind's check then names the problem)."""
    if not _is_messages(messages):
        return messages
    out = []
    for j, message in enumerate(messages):
        content = message.get("content")
        message = {k: _drop_nulls(v) for k, v in message.items() if v is not None or k == "content"}
        if isinstance(content, list):
            texts = []
            for k, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type", "text") != "text" or not isinstance(part.get("text"), str):
                    raise ctx.error(f"{name}[{j}].content[{k}]", "only text parts ({type: text, text}) can be trained on")
                texts.append(part["text"])
            message["content"] = "".join(texts)
        calls = message.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise ctx.error(f"{name}[{j}].tool_calls", f"expected a list of tool calls, got {type(calls).__name__}")
            message["tool_calls"] = [_tool_call(call, ctx, f"{name}[{j}].tool_calls[{k}]") for k, call in enumerate(calls)]
            if message.get("content") is None:
                message["content"] = ""
        out.append(message)
    return out


def _tool_call(call: Any, ctx: FormatContext, name: str) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise ctx.error(name, f"expected a tool call object, got {type(call).__name__}")
    function = call.get("function", call)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ctx.error(f"{name}.function.name", "missing (a tool call names its function)")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            raise ctx.error(f"{name}.function.arguments", f"is not valid JSON ({e.msg} at column {e.colno})") from None
    out = {**call, "type": call.get("type", "function"), "function": {**function, "arguments": arguments}}
    if "function" not in call:  # a flat {name, arguments} call
        out = {"type": "function", "function": out["function"]}
    return out


def _tools(value: Any, ctx: FormatContext) -> list[dict[str, Any]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ctx.error("tools", f"is not valid JSON ({e.msg} at column {e.colno})") from None
    value = _drop_nulls(value)
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ctx.error("tools", "expected a list of tool schemas ({type: function, function: {name, description, parameters}})")
    return value


def pair_row(prompt: Any, chosen: Any, rejected: Any, extras: dict[str, Any], ctx: FormatContext) -> dict[str, Any]:
    """A converted pair; for an ``sft`` run the chosen reply is the completion (``rejected`` is dropped)."""
    if ctx.kind == "sft":
        if isinstance(prompt, list):
            reply = chosen if isinstance(chosen, list) else [{"role": "assistant", "content": chosen}]
            return {**extras, "messages": prompt + reply}
        return {**extras, "prompt": prompt, "completion": chosen}
    return {**extras, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def split_shared_prompt(chosen: list[dict], rejected: list[dict], ctx: FormatContext) -> tuple[list[dict], list[dict], list[dict]]:
    """``(prompt, chosen reply, rejected reply)`` of two whole conversations: the prompt is their longest
    shared message prefix, which must end with a user (or tool) turn; each reply is one assistant turn or a
    trajectory (assistant turns interleaved with tool and user turns, ``alignkit.data.trajectory``) that
    starts and ends with an assistant turn, so two trajectories may diverge at any turn."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n and chosen[n - 1].get("role") == "assistant":
        n -= 1  # a shared assistant turn at the end of the prefix belongs to the replies
    if n == 0:
        raise ctx.error("chosen", "chosen and rejected do not start with the same prompt turn(s) (a user message)")
    if chosen[n - 1].get("role") not in ("user", "tool"):
        raise ctx.error(f"chosen[{n - 1}]", f"the shared prompt must end with a user turn, not {chosen[n - 1].get('role')!r}")
    for name, conversation in (("chosen", chosen), ("rejected", rejected)):
        if len(conversation) == n:
            raise ctx.error(name, "has no reply after the shared prompt")
        for j, where in ((n, "starts"), (len(conversation) - 1, "ends")):
            if conversation[j].get("role") != "assistant":
                raise ctx.error(f"{name}[{j}]", f"a {conversation[j].get('role')!r} turn {where} the reply after the shared prompt: a reply "
                                              "(one assistant turn, or a trajectory of assistant, tool and user turns) starts and ends with an assistant turn")
    return chosen[:n], chosen[n:], rejected[n:]


# --------------------------------------------------------------------------------------------------
# alignkit / openai
# --------------------------------------------------------------------------------------------------
_MESSAGE_FIELDS = ("messages", "prompt", "chosen", "rejected", "completion")


def _convert_alignkit(data: dict[str, Any], ctx: FormatContext) -> dict[str, Any]:
    out = dict(data)
    for name in _MESSAGE_FIELDS:
        if name in out:
            out[name] = normalise_messages(out[name], ctx, name)
    if out.get("tools") is not None and "messages" in out:
        out["tools"] = _tools(out["tools"], ctx)
    elif "tools" in out and out["tools"] is None:
        del out["tools"]
    return out


def _is_openai(data: dict[str, Any]) -> bool:
    messages = data.get("messages")
    if not isinstance(messages, list):
        return False
    tooling = any(isinstance(m, dict) and (m.get("tool_calls") or m.get("role") in ("tool", "function")) for m in messages)
    return tooling or data.get("tools") is not None


def _convert_openai(data: dict[str, Any], ctx: FormatContext) -> dict[str, Any]:
    if "messages" not in data:
        raise ctx.error("messages", f"missing (an OpenAI-style row holds its conversation in 'messages'; fields present: {', '.join(sorted(data))})")
    out = _convert_alignkit(data, ctx)
    if isinstance(out["messages"], list):
        out["messages"] = [{**m, "role": "tool"} if isinstance(m, dict) and m.get("role") == "function" else m for m in out["messages"]]
    return out


# --------------------------------------------------------------------------------------------------
# whole conversations: implicit prompt, explicit prompt (UltraFeedback)
# --------------------------------------------------------------------------------------------------
def _conversations(data: dict[str, Any], ctx: FormatContext) -> tuple[list[dict], list[dict]]:
    for name in ("chosen", "rejected"):
        value = data.get(name)
        if value is None:
            raise ctx.error(name, f"missing (fields present: {', '.join(sorted(data)) or 'none'})")
        if not _is_messages(value):
            raise ctx.error(name, "expected a whole conversation: a list of {role, content} messages")
    chosen = normalise_messages(data["chosen"], ctx, "chosen")
    rejected = normalise_messages(data["rejected"], ctx, "rejected")
    for name, conversation in (("chosen", chosen), ("rejected", rejected)):
        for j, m in enumerate(conversation):
            if m.get("role") not in CHAT_ROLES:
                raise ctx.error(f"{name}[{j}].role", f"unknown role {m.get('role')!r}; allowed: {', '.join(CHAT_ROLES)}")
            if not isinstance(m.get("content"), str):
                raise ctx.error(f"{name}[{j}].content", f"expected a string, got {type(m.get('content')).__name__}")
    return chosen, rejected


def _is_implicit(data: dict[str, Any]) -> bool:
    return "prompt" not in data and isinstance(data.get("chosen"), list) and isinstance(data.get("rejected"), list)


def _convert_implicit(data: dict[str, Any], ctx: FormatContext) -> dict[str, Any]:
    chosen, rejected = _conversations(data, ctx)
    prompt, chosen, rejected = split_shared_prompt(chosen, rejected, ctx)
    return pair_row(prompt, chosen, rejected, _rest(data, "chosen", "rejected"), ctx)


def _is_full_conversation(value: Any) -> bool:
    return _is_messages(value) and value[0].get("role") != "assistant"  # a reply (or trajectory) after a prompt starts with the assistant


def _is_ultrafeedback(data: dict[str, Any]) -> bool:
    return "prompt" in data and _is_full_conversation(data.get("chosen")) and isinstance(data.get("rejected"), list)


def _content(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _convert_ultrafeedback(data: dict[str, Any], ctx: FormatContext) -> dict[str, Any]:
    chosen, rejected = _conversations(data, ctx)
    prefix, chosen, rejected = split_shared_prompt(chosen, rejected, ctx)
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        if _content(prompt) not in {_content(m.get("content")) for m in prefix if m.get("role") == "user"}:
            raise ctx.error("prompt", "does not match any user turn that chosen and rejected start with")
    elif _is_messages(prompt):
        prompt = normalise_messages(prompt, ctx, "prompt")
        if prefix[: len(prompt)] != prompt:
            raise ctx.error("prompt", "the conversations chosen and rejected do not start with these prompt messages")
    else:
        raise ctx.error("prompt", f"expected a string or a list of messages, got {type(prompt).__name__}")
    extras = _rest(data, "prompt", "chosen", "rejected")
    messages = normalise_messages(extras.get("messages"), ctx, "messages")
    if messages == prefix + chosen:  # UltraFeedback's 'messages' repeats the chosen conversation
        del extras["messages"]
    return pair_row(prefix, chosen, rejected, extras, ctx)


# --------------------------------------------------------------------------------------------------
# Anthropic HH raw text
# --------------------------------------------------------------------------------------------------
HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def _is_hh(data: dict[str, Any]) -> bool:
    return "prompt" not in data and isinstance(data.get("chosen"), str) and isinstance(data.get("rejected"), str)


def hh_turns(text: str, ctx: FormatContext, name: str) -> tuple[list[dict[str, str]], str]:
    """``(prompt messages, final reply)`` of one HH transcript: it is split on its last
    ``"\\n\\nAssistant:"``; the part before is cut into Human (user) and Assistant turns."""
    if not text.startswith(HH_HUMAN) and text.lstrip().startswith("Human:"):
        text = "\n\n" + text.lstrip()  # some copies drop the leading blank line
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0 or not text.startswith(HH_HUMAN):
        raise ctx.error(name, "expected Anthropic HH text '\\n\\nHuman: ... \\n\\nAssistant: ...'")
    head, reply = text[:cut], text[cut + len(HH_ASSISTANT):].strip()
    messages: list[dict[str, str]] = []
    pos = 0
    while pos < len(head):
        role, marker = ("user", HH_HUMAN) if head.startswith(HH_HUMAN, pos) else ("assistant", HH_ASSISTANT)
        if not head.startswith(marker, pos):
            raise ctx.error(name, f"unexpected text before the first Human turn: {head[:30]!r}")
        start = pos + len(marker)
        ends = [i for i in (head.find(HH_HUMAN, start), head.find(HH_ASSISTANT, start)) if i >= 0]
        pos = min(ends) if ends else len(head)
        messages.append({"role": role, "content": head[start:pos].strip()})
    if messages[-1]["role"] != "user":
        raise ctx.error(name, "two Assistant turns in a row before the reply: the last turn before 'Assistant:' must be Human")
    if not reply:
        raise ctx.error(name, "the last Assistant turn is empty")
    return messages, reply


def _convert_hh(data: dict[str, Any], ctx: FormatContext) -> dict[str, Any]:
    for name in ("chosen", "rejected"):
        if not isinstance(data.get(name), str):
            raise ctx.error(name, f"expected Anthropic HH text, got {type(data.get(name)).__name__}")
    prompt, chosen = hh_turns(data["chosen"], ctx, "chosen")
    prompt_r, rejected = hh_turns(data["rejected"], ctx, "rejected")
    if prompt != prompt_r:
        raise ctx.error("rejected", "its conversation before the last Assistant turn differs from chosen's")
    return pair_row(prompt, chosen, rejected, _rest(data, "chosen", "rejected"), ctx)


# --------------------------------------------------------------------------------------------------
# ShareGPT
# --------------------------------------------------------------------------------------------------
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system",
                  "tool": "tool", "observation": "tool", "function_response": "tool", "function_call": "assistant"}


def _is_sharegpt(data: dict[str, Any]) -> bool:
    return isinstance(data.get("conversations"), list)


def _sharegpt_turn(turn: Any, ctx: FormatContext, name: str) -> dict[str, str]:
    if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
        raise ctx.error(name, "each ShareGPT turn needs 'from' and 'value'")
    who = turn["from"]
    role = SHAREGPT_ROLES.get(who.lower() if isinstance(who, str) else who)
    if role is None:
        raise ctx.error(f"{name}.from", f"unknown speaker {who!r}; allowed: {', '.join(SHAREGPT_ROLES)}")
    if not isinstance(turn["value"], str):
        raise ctx.error(f"{name}.value", f"expected a string, got {type(turn['value']).__name__}")
    return {"role": role, "content": turn["value"]}


def _convert_sharegpt(data: dict[str, Any], ctx: FormatContext) -> dict[str, Any]:
    turns = data.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ctx.error("conversations", "expected a non-empty list of {from, value} turns")
    messages = [_sharegpt_turn(t, ctx, f"conversations[{j}]") for j, t in enumerate(turns)]
    used = ["conversations"]
    if isinstance(data.get("system"), str) and data["system"].strip() and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": data["system"]}, *messages]
        used.append("system")
    if "chosen" in data or "rejected" in data:  # the preference form: the turns are the prompt
        replies = []
        for name in ("chosen", "rejected"):
            value = data.get(name)
            if isinstance(value, dict):
                value = _sharegpt_turn(value, ctx, name)["content"]
            if not isinstance(value, str):
                raise ctx.error(name, "expected a {from, value} turn or a string")
            replies.append(value)
        return pair_row(messages, replies[0], replies[1], _rest(data, *used, "chosen", "rejected"), ctx)
    return {**_rest(data, *used), "messages": messages}


# --------------------------------------------------------------------------------------------------
# Alpaca
# --------------------------------------------------------------------------------------------------
def _is_alpaca(data: dict[str, Any]) -> bool:
    return "instruction" in data and "prompt" not in data and "messages" not in data


def alpaca_prompt(instruction: str, input_text: Any) -> str:
    """The instruction, then a blank line and the input when there is one."""
    extra = input_text.strip() if isinstance(input_text, str) else ""
    return f"{instruction}\n\n{input_text}" if extra else instruction


def _convert_alpaca(data: dict[str, Any], ctx: FormatContext) -> dict[str, Any]:
    instruction = data.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ctx.error("instruction", "expected a non-empty string")
    if data.get("input") is not None and not isinstance(data["input"], str):
        raise ctx.error("input", f"expected a string, got {type(data['input']).__name__}")
    prompt = alpaca_prompt(instruction, data.get("input"))
    if "output" in data:
        return {**_rest(data, "instruction", "input", "output"), "prompt": prompt, "completion": data["output"]}
    if "chosen" in data or "rejected" in data:
        return pair_row(prompt, data.get("chosen"), data.get("rejected"), _rest(data, "instruction", "input", "chosen", "rejected"), ctx)
    raise ctx.error("output", f"missing (an Alpaca row has instruction, input, output; fields present: {', '.join(sorted(data))})")


# --------------------------------------------------------------------------------------------------
# the built-in formats (auto tries them lowest order first; alignkit is the fallback)
# --------------------------------------------------------------------------------------------------
register_format("alignkit", detect=lambda d: False, convert=_convert_alignkit, order=1000, family="alignkit",
                description="alignkit's own fields (prompt/completion, messages, prompt/chosen/rejected, ...)")
register_format("openai", detect=_is_openai, convert=_convert_openai, order=10, family="alignkit",
                description="messages with system turns, assistant tool_calls, tool results and a tools field")
register_format("sharegpt", detect=_is_sharegpt, convert=_convert_sharegpt, order=20,
                description="conversations of {from, value} turns (human, gpt, system, tool)")
register_format("ultrafeedback", detect=_is_ultrafeedback, convert=_convert_ultrafeedback, order=30,
                description="prompt + chosen/rejected as whole conversations that start with the prompt")
register_format("implicit_prompt", detect=_is_implicit, convert=_convert_implicit, order=40,
                description="chosen/rejected as whole conversations, no prompt field: the shared prefix is the prompt")
register_format("hh_raw", detect=_is_hh, convert=_convert_hh, order=50,
                description="Anthropic HH text: chosen/rejected as '\\n\\nHuman: ... \\n\\nAssistant: ...'")
register_format("alpaca", detect=_is_alpaca, convert=_convert_alpaca, order=60,
                description="instruction + input + output (or chosen/rejected)")
