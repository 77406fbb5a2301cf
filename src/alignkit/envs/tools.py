"""Tool calls in the ``transformers`` tool-use convention: tools described by JSON schema, the policy's
calls parsed from its text, results returned as ``tool`` messages.

* **Describing.** A :class:`Tool` has a name, a description and a JSON schema of its parameters;
  :func:`tool_schemas` gives the ``tools=`` list of ``tokenizer.apply_chat_template`` (``{"type": "function",
  "function": {name, description, parameters}}``). When a chat template does not render ``tools``, the
  rollout writes the schemas into the system message instead (:func:`alignkit.data.encode.schemas_as_text`).
* **Calling.** The policy writes Hermes / Qwen-style blocks, ``<tool_call>{"name": ..., "arguments":
  {...}}</tool_call>``, anywhere in its turn, one or several. :func:`parse_tool_calls` finds every block
  (``arguments`` may also be a JSON string of an object, as some templates write them); a block that is
  not JSON, lacks ``name``, names an unknown tool, has arguments that are not an object, or is opened but
  never closed is a :class:`ToolCall` with an ``error``.
* **Answering.** :meth:`ToolEnvironment.step` runs the valid calls in order and answers with one ``tool``
  message per block: the tool's result, or ``error: ...`` saying what was wrong (a malformed call is an
  observation, never a crash); a turn without a call goes to :meth:`ToolEnvironment.answer`.

Tools are registered in :data:`TOOLS`; the first is ``calc``, a calculator that evaluates arithmetic with
``ast`` (numbers, ``+ - * / // % **`` and parentheses; no names, calls or attributes; bounded sizes).
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.registry import Registry
from .base import Environment, Message, StepResult

TOOLS: Registry["Tool"] = Registry("tool")

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)(" + re.escape(CALL_CLOSE) + r"|$)", re.DOTALL)


@dataclass(frozen=True)
class Tool:
    """A function the policy may call: ``fn(**arguments) -> str`` (raise ``ValueError`` for bad input:
    its message becomes the ``error:`` observation)."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]

    def schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def __call__(self, arguments: dict[str, Any]) -> str:
        required = self.parameters.get("required", [])
        allowed = self.parameters.get("properties", {})
        missing = [k for k in required if k not in arguments]
        unknown = [k for k in arguments if k not in allowed]
        if missing or unknown:
            parts = ([f"missing argument(s) {', '.join(missing)}"] if missing else []) + ([f"unknown argument(s) {', '.join(unknown)}"] if unknown else [])
            raise ValueError("; ".join(parts))
        return str(self.fn(**arguments))


def register_tool(tool: Tool) -> Tool:
    return TOOLS.register(tool.name, tool)


def tool_schemas(names) -> list[dict[str, Any]]:
    """The JSON schemas of the tools ``names`` (registered in :data:`TOOLS`)."""
    return [TOOLS.get(n).schema() for n in names]


@dataclass
class ToolCall:
    """One ``<tool_call>`` block: the tool's ``name`` and ``arguments``, or ``error`` (the block is malformed)."""

    name: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    text: str = ""

    @property
    def valid(self) -> bool:
        return self.error is None


def parse_tool_calls(text: str, known: set[str] | None = None) -> list[ToolCall]:
    """Every ``<tool_call>...</tool_call>`` block of ``text`` in order (an unclosed block at the end counts,
    as malformed). ``known``: the tool names that may be called (None: any name)."""
    calls = []
    for match in _BLOCK.finditer(text):
        body, closed = match.group(1).strip(), bool(match.group(2))
        calls.append(_parse_block(body, closed, known))
    return calls


def _parse_block(body: str, closed: bool, known: set[str] | None) -> ToolCall:
    if not closed:
        return ToolCall(None, error=f"malformed tool call: {CALL_OPEN} is never closed by {CALL_CLOSE}", text=body)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolCall(None, error=f"malformed tool call: not JSON ({e.msg} at character {e.pos})", text=body)
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return ToolCall(None, error='malformed tool call: expected {"name": ..., "arguments": {...}}', text=body)
    name, arguments = value["name"], value.get("arguments", {})
    if isinstance(arguments, str):  # some templates write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return ToolCall(name, error="malformed tool call: arguments is a string that is not JSON", text=body)
    if not isinstance(arguments, dict):
        return ToolCall(name, error="malformed tool call: arguments must be an object", text=body)
    if known is not None and name not in known:
        return ToolCall(name, arguments, error=f"unknown tool {name!r}; tools: {', '.join(sorted(known)) or '(none)'}", text=body)
    return ToolCall(name, arguments, text=body)


def as_tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A call as an assistant message's ``tool_calls`` entry (OpenAI / ``transformers`` style): what
    demonstrations hold; the chat template renders it (or the data layer writes it as a ``<tool_call>``
    block when the template does not: :func:`alignkit.data.encode.tools_as_text`)."""
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


class ToolEnvironment(Environment):
    """An environment with tools: a turn holding ``<tool_call>`` blocks gets one ``tool`` message per block
    (result or error) and the episode goes on; a turn without one is the policy's answer, graded by
    :meth:`answer`. Counts ``tool_calls`` and ``invalid_calls`` (malformed blocks, unknown tools, calls
    that raise) for the episode's metrics."""

    def __init__(self, tools: list[str] | tuple[str, ...] | None = None):
        if tools is not None:
            self.tools = tuple(tools)
        for name in self.tools:
            TOOLS.get(name)  # unknown names list the registered ones
        self.tool_calls = 0
        self.invalid_calls = 0

    def answer(self, message: str) -> StepResult:
        """The policy's turn without a tool call: grade it (subclasses)."""
        raise NotImplementedError

    def step(self, message: str) -> StepResult:
        calls = parse_tool_calls(message, set(self.tools))
        if not calls:
            return self.answer(message)
        return StepResult(observation=[self.run(call) for call in calls])

    def run(self, call: ToolCall) -> Message:
        self.tool_calls += 1
        content = None
        if call.valid:
            try:
                content = TOOLS.get(call.name)(call.arguments)
            except (ValueError, TypeError, ArithmeticError) as e:
                call.error = f"{call.name}: {e}"
        if call.error is not None:
            self.invalid_calls += 1
            content = f"error: {call.error}"
        message = {"role": "tool", "content": content}
        if call.name:
            message["name"] = call.name
        return message

    def metrics(self) -> dict[str, float]:
        return {"tool_calls": float(self.tool_calls), "invalid_calls": float(self.invalid_calls)}


# --------------------------------------------------------------------------------------------------
# the calculator: arithmetic through ast, never eval
# --------------------------------------------------------------------------------------------------
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_DIGITS = 30  # results and operands beyond 10^30 are refused
MAX_EXPRESSION = 200  # characters


def calculate(expression: str) -> int | float:
    """The value of an arithmetic ``expression`` (numbers, ``+ - * / // % **``, parentheses). Anything
    else (names, calls, attributes, strings, comparisons), division by zero, an exponent above 64 or a
    number beyond 10^30 raises ``ValueError``; nothing is executed."""
    if not isinstance(expression, str):
        raise ValueError(f"expected an expression string, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION:
        raise ValueError(f"expression longer than {MAX_EXPRESSION} characters")
    text = expression.strip().rstrip("=").strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse {expression!r}") from None
    return _value(tree.body)


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent above 64")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ValueError("division by zero")
        return _bounded(_BINARY[type(node.op)](left, right))
    raise ValueError(f"only numbers and + - * / // % ** are allowed (got {type(node).__name__})")


def _bounded(x: int | float) -> int | float:
    if isinstance(x, complex) or (isinstance(x, float) and not math.isfinite(x)) or abs(x) >= 10**MAX_DIGITS:
        raise ValueError("number out of range")
    return x


def format_number(x: int | float) -> str:
    """Integers as integers (``12.0`` -> ``12``), other floats to 6 significant digits."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x) if isinstance(x, int) else f"{x:.6g}"


register_tool(Tool(
    "calc", "Evaluate an arithmetic expression (numbers, + - * / // % ** and parentheses) and return its value.",
    {"type": "object", "properties": {"expr": {"type": "string", "description": "the expression, e.g. 37 + 48"}}, "required": ["expr"]},
    lambda expr: format_number(calculate(expr)),
))

__all__ = ["CALL_CLOSE", "CALL_OPEN", "TOOLS", "Tool", "ToolCall", "ToolEnvironment", "as_tool_call", "calculate", "format_number",
           "parse_tool_calls", "register_tool", "tool_schemas"]
