"""Trajectories: multi-turn conversations in which the assistant acts and an environment answers.

A trajectory is a message list with roles ``system``/``developer`` (first), ``user`` (the task, and
environment observations written as text), ``assistant`` (the policy's turns, with optional OpenAI-style
``tool_calls``) and ``tool`` (a tool's result, answering a call of the assistant turn before it)::

    [{"role": "user", "content": "what is 37 * 41?"},
     {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "calculator", "arguments": {"expression": "37 * 41"}}}]},
     {"role": "tool", "content": "1517"},
     {"role": "assistant", "content": "37 * 41 = 1517"}]

Every record kind that holds conversations takes trajectories (``docs/trajectories.md``):

* ``pair`` (DPO and every pairwise loss, multi-turn DPO / M-DPO): ``prompt`` + ``chosen`` + ``rejected``
  where each reply is a message list that may hold several assistant turns interleaved with tool and
  user (environment) turns; or two whole trajectories for the same task (no ``prompt``): their longest
  shared message prefix is the prompt, so they may diverge at any turn.
* ``unpaired`` (KTO, multi-turn KTO / M-KTO): ``messages`` + ``label`` (a whole trajectory: the prompt is
  everything before its first assistant turn), or ``prompt`` + ``completion`` as message lists.
* ``sft``: ``messages``; every assistant turn is trained.

Loss masks come from the chat template's assistant spans (:meth:`alignkit.data.encode.Encoder.conversation`):
a token is trained when it belongs to what an assistant turn adds to the rendering after its generation
prompt (the role header is not trained; the end-of-turn marker is, so the policy learns to stop).
Environment and tool tokens are context only: they are in the input, never targets, so they are absent
from the summed log-probs that enter the DPO margin and the KTO reward, and no loss reaches the logits
that predict them.

:func:`check_trajectory` refuses malformed trajectories with one line naming file, row and field: a tool
message with no tool call before it, system turns after the conversation started, an empty assistant
turn, a reply that does not start and end with an assistant turn.
"""

from __future__ import annotations

from typing import Any, Sequence

from .errors import DataError

__all__ = ["check_trajectory", "check_conversation", "check_reply", "is_trajectory", "reply_mask", "split_trajectory", "pairs_from_scored"]

_FIRST_ONLY = ("system", "developer")


def is_trajectory(messages: Any) -> bool:
    """Whether a message list holds environment turns: a ``tool`` message, an assistant ``tool_calls``,
    or more than one assistant turn (a plain single reply is not a trajectory)."""
    if not isinstance(messages, list):
        return False
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    calls = any(isinstance(m, dict) and m.get("tool_calls") for m in messages)
    return calls or "tool" in roles or roles.count("assistant") > 1


def check_trajectory(messages: Sequence[dict], names: Sequence[str], source: str, row: int) -> None:
    """Check the turn structure of a conversation; ``names[i]`` is message i's field name for errors
    (e.g. ``prompt[1]``, ``chosen[0]``). Roles and contents are already checked (:func:`check_text`)."""
    started = False
    open_calls: list[dict] | None = None  # the tool calls of the last assistant turn not yet answered
    for i, message in enumerate(messages):
        role, name = message["role"], names[i]
        if role in _FIRST_ONLY:
            if started:
                raise DataError(source, row, f"{name}.role", f"a '{role}' turn after the conversation started "
                                "(system and developer messages come first)")
            continue
        started = True
        if role == "assistant":
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise DataError(source, row, f"{name}.tool_calls", f"expected a list of tool calls, got {type(calls).__name__}")
            for k, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
                    raise DataError(source, row, f"{name}.tool_calls[{k}].function.name", "missing (a tool call names its function)")
            if not calls and not message["content"].strip():
                raise DataError(source, row, name, "an empty assistant turn (no content and no tool calls)")
            open_calls = list(calls) if calls else None
        elif role == "tool":
            if open_calls is None:
                raise DataError(source, row, f"{name}.role", "a tool message with no tool call before it (a tool result answers "
                                "a tool_calls entry of the assistant turn just before; write other observations as user turns)")
            if not open_calls:
                raise DataError(source, row, f"{name}.role", "more tool results than the assistant turn before made tool calls")
            call_id = message.get("tool_call_id")
            ids = [c.get("id") for c in open_calls]
            if call_id is not None and any(x is not None for x in ids):
                if call_id not in ids:
                    raise DataError(source, row, f"{name}.tool_call_id", f"{call_id!r} answers none of the open tool calls ({', '.join(map(repr, ids))})")
                open_calls.pop(ids.index(call_id))
            else:
                open_calls.pop(0)
        else:  # user: the task or an environment observation
            open_calls = None


def check_conversation(messages: Sequence[dict], field: str, source: str, row: int) -> None:
    """:func:`check_trajectory` on a whole conversation held in one field (``messages``)."""
    check_trajectory(messages, [f"{field}[{j}]" for j in range(len(messages))], source, row)


def check_reply(prompt: Any, reply: Any, field: str, source: str, row: int) -> None:
    """Check a reply (a message list after ``prompt``, a string or messages) together with its prompt:
    the whole conversation's turn structure, and that a trajectory reply starts and ends with an assistant turn."""
    if not isinstance(reply, list):
        return
    head = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    head_names = ["prompt"] if isinstance(prompt, str) else [f"prompt[{j}]" for j in range(len(head))]
    check_trajectory(head + reply, head_names + [f"{field}[{j}]" for j in range(len(reply))], source, row)
    if not is_trajectory(reply):
        return
    if reply[0]["role"] != "assistant":
        raise DataError(source, row, f"{field}[0].role", f"a reply starts with an assistant turn, not {reply[0]['role']!r} "
                        "(shared turns belong to the prompt)")
    if reply[-1]["role"] != "assistant":
        raise DataError(source, row, f"{field}[{len(reply) - 1}].role", f"the reply ends with a {reply[-1]['role']!r} turn: "
                        "a trajectory's last turn is the assistant's (drop the trailing observation)")


def split_trajectory(messages: list[dict], source: str, row: int, field: str = "messages") -> tuple[list[dict], list[dict]]:
    """``(prompt, reply)`` of a whole trajectory: the turns before its first assistant turn, and the rest."""
    first = next((j for j, m in enumerate(messages) if m["role"] == "assistant"), None)
    if first is None:
        raise DataError(source, row, field, "has no assistant turn to train on")
    if first == 0:
        raise DataError(source, row, f"{field}[0]", "starts with an assistant turn: a trajectory starts with the task (a user turn)")
    return messages[:first], messages[first:]


def reply_mask(encoder: Any, prompt: Any, reply: Any, row: int) -> list[int] | None:
    """Loss mask over the tokens of a message-list ``reply`` as :meth:`Encoder.completion_ids` gives them
    (what the conversation's rendering adds after ``prompt`` rendered with its generation prompt): 1 on the
    assistant turns' tokens, 0 on the headers and contents of tool and user turns. None for a text reply
    or a single assistant turn, whose every token is trained."""
    if not isinstance(reply, list) or (len(reply) == 1 and reply[0]["role"] == "assistant"):
        return None
    head = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    _, mask = encoder.conversation(head + list(reply), row)
    return mask[len(encoder.prompt_ids(head)) :]


def pairs_from_scored(rows: Sequence[dict[str, Any]], key: str = "reward", group: str = "task", min_gap: float = 0.0) -> list[dict[str, Any]]:
    """Preference pairs of whole trajectories (M-DPO's data step): rows ``{group: ..., "messages": [...], key: score}``
    are grouped by ``group``; each group with a score gap above ``min_gap`` gives one pair, its best trajectory
    chosen and its worst rejected (first seen wins ties), as ``{"chosen": [...], "rejected": [...], "margin": gap,
    group: ...}`` rows of the ``pair`` kind (the shared prefix becomes the prompt when they are read)."""
    groups: dict[Any, list[dict]] = {}
    for r in rows:
        groups.setdefault(repr(r[group]), []).append(r)
    out = []
    for members in groups.values():
        best = max(members, key=lambda r: r[key])
        worst = min(members, key=lambda r: r[key])
        gap = float(best[key]) - float(worst[key])
        if gap > min_gap:
            out.append({"chosen": best["messages"], "rejected": worst["messages"], "margin": gap, group: best[group]})
    return out
