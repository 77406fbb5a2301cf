"""Turning checked records into token ids with loss masks.

Conventions:

* Plain text: ``prompt`` and ``completion`` are tokenized separately (no special tokens added) and
  concatenated, and the tokenizer's EOS is appended to the completion. Tokenizing them apart keeps the
  prompt's tokens identical for every completion of a prompt, so chosen and rejected share an exact prefix.
* Conversations: messages are rendered with the tokenizer's chat template. The completion's tokens are
  those the assistant turn adds after the rendered prompt with ``add_generation_prompt=True``; a template
  whose rendering of a longer conversation does not start with the rendering of the shorter one is
  reported, not guessed around.
* Only completion (assistant) tokens are trained: ``loss_mask[i] == 1`` marks token ``i`` as a target.
* Tools (OpenAI style): a conversation's ``tools`` go to ``apply_chat_template(..., tools=...)`` and
  assistant ``tool_calls`` stay in their messages, so a template that renders them does so its own way;
  assistant turns, tool calls included, are trained, ``tool`` results are not. For a template that
  renders neither (it ignores them), they are written as text instead (:func:`tools_as_text`): each call
  as ``<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`` after the assistant's content, the
  tool schemas as ``<tools>`` lines in the system message (a new first message when there is none).
* How each record kind becomes an example is its registration's ``encode`` (:mod:`alignkit.data.kinds`);
  a record's metadata (fields outside its kind's schema) is copied to the example's ``"meta"``.

Truncation policy for a row longer than ``max_length`` tokens (``truncation``):
``error`` (default) raises a :class:`DataError` naming the row; ``left`` drops tokens from the start of the
prompt (then, if still too long, from the end of the completion); ``right`` drops tokens from the end of
the completion; ``skip`` leaves the row out and counts it in the summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError, RowTooLong, SkipSummary
from .kinds import get_kind

__all__ = ["Encoder", "RowTooLong", "TRUNCATION_POLICIES", "encode_records"]

TRUNCATION_POLICIES = ("error", "left", "right", "skip")


@dataclass
class Encoder:
    tokenizer: Any
    max_length: int = 512
    truncation: str = "error"
    source: str = "<data>"
    _renders: dict[str, bool] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION_POLICIES:
            raise ValueError(f"unknown truncation policy '{self.truncation}'; allowed: {', '.join(TRUNCATION_POLICIES)}")
        if self.tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; set one (tokenizer.eos_token) before training")

    # ----------------------------------------------------------------------------------------------
    # text -> ids
    # ----------------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _render(self, messages: list[dict], generation_prompt: bool, tools: list[dict] | None = None) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("conversational data needs a tokenizer with a chat template")
        messages, tools = self._tooling(messages, tools)
        text = self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)
        return self._ids(text)

    def renders(self, what: str) -> bool:
        """Whether the chat template renders ``tool_calls`` or ``tools`` (probed once with a made-up function)."""
        if what not in self._renders:
            name = "alignkit_probe_fn"
            call = {"type": "function", "function": {"name": name, "arguments": {"x": 1}}}
            messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
            tools = [{"type": "function", "function": {"name": name, "description": "probe", "parameters": {"type": "object", "properties": {}}}}]
            try:
                if what == "tool_calls":
                    text = self.tokenizer.apply_chat_template(messages, tokenize=False)
                else:
                    text = self.tokenizer.apply_chat_template(messages[:1], tools=tools, tokenize=False, add_generation_prompt=True)
            except Exception:  # noqa: BLE001 - a template that fails on them does not render them
                text = ""
            self._renders[what] = name in text
        return self._renders[what]

    def _tooling(self, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list[dict] | None]:
        has_calls = any(m.get("tool_calls") for m in messages)
        if not has_calls and not tools:
            return messages, None
        if has_calls and not self.renders("tool_calls"):
            messages = [tools_as_text(m) for m in messages]
        if tools and not self.renders("tools"):
            messages, tools = schemas_as_text(messages, tools), None
        return messages, tools

    def prompt_ids(self, prompt: str | list[dict]) -> list[int]:
        if isinstance(prompt, str):
            return self._ids(prompt)
        return self._render(prompt, generation_prompt=True)

    def completion_ids(self, prompt: str | list[dict], prompt_ids: list[int], completion: str | list[dict], row: int, field: str) -> list[int]:
        if isinstance(prompt, str) and isinstance(completion, str):
            return self._ids(completion) + [self.tokenizer.eos_token_id]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if isinstance(prompt, str):
            prompt_ids = self._render(messages, generation_prompt=True)
        reply = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
        full = self._render(messages + reply, generation_prompt=False)
        if full[: len(prompt_ids)] != prompt_ids:
            raise DataError(self.source, row, field, "the chat template's rendering of the conversation does not start with its rendering of the prompt")
        return full[len(prompt_ids) :]

    def conversation(self, messages: list[dict], row: int, tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
        """Token ids of a whole conversation and the mask of its assistant tokens (tool calls included)."""
        ids = self._render(messages, generation_prompt=False, tools=tools)
        mask = [0] * len(ids)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = len(self._render(messages[:i], generation_prompt=True, tools=tools)) if i else 0
            end_ids = self._render(messages[: i + 1], generation_prompt=False, tools=tools)
            if ids[: len(end_ids)] != end_ids:
                raise DataError(self.source, row, f"messages[{i}]", "the chat template is not prefix-consistent across turns")
            for j in range(start, len(end_ids)):
                mask[j] = 1
        return ids, mask

    # ----------------------------------------------------------------------------------------------
    # length policy
    # ----------------------------------------------------------------------------------------------
    def fit(self, prompt: list[int], completions: list[list[int]], row: int) -> tuple[list[int], list[list[int]]]:
        """Apply the truncation policy so that prompt + the longest completion fits ``max_length``."""
        longest = max(len(c) for c in completions)
        excess = len(prompt) + longest - self.max_length
        if excess <= 0:
            return prompt, completions
        if self.truncation in ("error", "skip"):
            raise RowTooLong(
                self.source, row, None,
                f"{len(prompt) + longest} tokens is longer than max_length={self.max_length} "
                "(set data.truncation to left, right or skip, or raise data.max_length)",
            )
        if self.truncation == "left":
            cut = min(excess, max(len(prompt) - 1, 0))
            prompt = prompt[cut:]
            excess -= cut
        if excess > 0:
            keep = self.max_length - len(prompt)
            if keep < 1:
                raise RowTooLong(self.source, row, None, f"the prompt alone fills max_length={self.max_length}")
            completions = [c[:keep] for c in completions]
        return prompt, completions

    # ----------------------------------------------------------------------------------------------
    # records -> examples
    # ----------------------------------------------------------------------------------------------
    def encode(self, record: dict[str, Any], kind: str) -> dict[str, Any]:
        """One checked record of ``kind`` as an example (the kind's registered encoder); the record's
        metadata travels along under ``"meta"``."""
        spec = get_kind(kind)
        example = spec.encode(self, record)
        example.setdefault("row", record.get("_row", 0))
        if not spec.meta_at_top and record.get("meta"):
            example["meta"] = record["meta"]
        return example


def tools_as_text(message: dict) -> dict:
    """An assistant message with its ``tool_calls`` written into its content (for templates that ignore
    them): one ``<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`` block per call."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    blocks = [json.dumps({"name": c["function"]["name"], "arguments": c["function"].get("arguments", {})}, ensure_ascii=False) for c in calls]
    text = "\n".join(f"<tool_call>\n{b}\n</tool_call>" for b in blocks)
    content = message.get("content") or ""
    out = {k: v for k, v in message.items() if k != "tool_calls"}
    out["content"] = f"{content}\n{text}" if content.strip() else text
    return out


def schemas_as_text(messages: list[dict], tools: list[dict]) -> list[dict]:
    """The conversation with the tool schemas in its system message (for templates that ignore ``tools``)."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    block = f"You can call these tools:\n<tools>\n{lines}\n</tools>"
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        return [{**first, "content": f"{first.get('content') or ''}\n\n{block}".lstrip()}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def encode_records(records: list[dict], kind: str, encoder: Encoder, summary: SkipSummary | None = None) -> list[dict]:
    """Encode every record; rows too long under ``truncation="skip"`` are counted in ``summary``."""
    examples = []
    for record in records:
        try:
            examples.append(encoder.encode(record, kind))
        except RowTooLong as e:
            if encoder.truncation != "skip":
                raise
            if summary is not None:
                summary.add(e)
    if not examples:
        raise DataError(encoder.source, None, None, f"no row fits max_length={encoder.max_length}")
    return examples
