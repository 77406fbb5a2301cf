"""Writes the trajectory recipes' data files (seeded, so the files are reproducible):

* ``recipes/data/trajectory_pairs.jsonl``: multi-turn preference pairs for M-DPO. Each task asks for an
  arithmetic result; the chosen trajectory calls a ``calculator`` tool, reads its result and states it;
  the rejected one goes wrong in one of three ways: it states a wrong number after the same tool call
  (the pair diverges at the last turn), it answers without the tool (diverges at the first assistant
  turn), or it calls the tool with a wrong expression (diverges at the first assistant turn, and the tool
  result differs). Each row holds two whole trajectories (no ``prompt``): the reader takes their shared
  turns as the prompt, so a pair may diverge at any turn (rows of ``prompt`` + two continuations work too,
  in a file of their own: one file holds one format).
* ``recipes/data/trajectory_thumbs.jsonl``: the same trajectories unpaired, ``messages`` + ``label``, for M-KTO.
* ``recipes/data/code_tasks.jsonl``: prompts with unit tests for the sandboxed code reward.

    python recipes/trajectory/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
SYSTEM = "You can call a calculator tool: calculator(expression) evaluates an arithmetic expression. Answer with the number."


def call(expression: str, k: int) -> dict:
    return {"role": "assistant", "content": "", "tool_calls": [{"id": f"call_{k}", "type": "function",
                                                                "function": {"name": "calculator", "arguments": {"expression": expression}}}]}


def result(value: int, k: int) -> dict:
    return {"role": "tool", "tool_call_id": f"call_{k}", "content": str(value)}


def answer(value: int) -> dict:
    return {"role": "assistant", "content": f"The answer is {value}."}


def task(rng: random.Random) -> tuple[str, int]:
    a, b, c = rng.randint(12, 99), rng.randint(12, 99), rng.randint(1, 99)
    op = rng.choice(["+", "-"])
    expression = f"{a} * {b} {op} {c}"
    return expression, eval(expression)  # noqa: S307 - our own arithmetic string


def off(value: int, rng: random.Random) -> int:
    return value + rng.choice([-1, 1]) * rng.randint(1, 20)


def trajectories(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        expression, value = task(rng)
        head = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is {expression}?"}]
        chosen = [call(expression, 0), result(value, 0), answer(value)]
        style = i % 3
        if style == 0:  # same tool call and result, wrong final number
            rejected = [call(expression, 0), result(value, 0), answer(off(value, rng))]
        elif style == 1:  # no tool: a guess
            rejected = [answer(off(value, rng))]
        else:  # the tool called with a wrong expression, its (correct) result stated
            wrong = expression.replace(" * ", " + ", 1)
            rejected = [call(wrong, 0), result(eval(wrong), 0), answer(eval(wrong))]  # noqa: S307
        rows.append({"head": head, "chosen": chosen, "rejected": rejected, "task": expression, "style": ["wrong_answer", "no_tool", "wrong_call"][style]})
    return rows


def pair_rows(items: list[dict]) -> list[dict]:
    return [{"chosen": t["head"] + t["chosen"], "rejected": t["head"] + t["rejected"], "task": t["task"], "style": t["style"]} for t in items]


def thumbs_rows(items: list[dict]) -> list[dict]:
    out = []
    for t in items:
        out.append({"messages": t["head"] + t["chosen"], "label": True, "task": t["task"]})
        out.append({"messages": t["head"] + t["rejected"], "label": False, "task": t["task"]})
    return out


CODE_TASKS = [
    ("Write a Python function add(a, b) that returns the sum of a and b.",
     ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(0, 0) == 0"]),
    ("Write a Python function is_even(n) that returns True when n is even.",
     ["assert is_even(4) is True", "assert is_even(7) is False", "assert is_even(0) is True"]),
    ("Write a Python function reverse(s) that returns the string s reversed.",
     ["assert reverse('abc') == 'cba'", "assert reverse('') == ''"]),
    ("Write a Python function largest(xs) that returns the largest number of a non-empty list.",
     ["assert largest([3, 9, 2]) == 9", "assert largest([-5, -2]) == -2", "assert largest([7]) == 7"]),
    ("Write a Python function count_vowels(s) that counts the vowels (a, e, i, o, u) in s.",
     ["assert count_vowels('hello') == 2", "assert count_vowels('xyz') == 0", "assert count_vowels('aeiou') == 5"]),
    ("Write a Python function factorial(n) for n >= 0.",
     ["assert factorial(0) == 1", "assert factorial(5) == 120", "assert factorial(1) == 1"]),
    ("Write a Python function fizz(n) that returns 'fizz' when n is divisible by 3 and str(n) otherwise.",
     ["assert fizz(3) == 'fizz'", "assert fizz(4) == '4'", "assert fizz(9) == 'fizz'"]),
    ("Write a Python function square_all(xs) that returns the list of the squares of xs.",
     ["assert square_all([1, 2, 3]) == [1, 4, 9]", "assert square_all([]) == []"]),
]


def write(name: str, rows: list[dict]) -> None:
    path = DATA / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{path}: {len(rows)} rows")


def main() -> None:
    items = trajectories(48)
    write("trajectory_pairs.jsonl", pair_rows(items))
    write("trajectory_thumbs.jsonl", thumbs_rows(items))
    write("code_tasks.jsonl", [{"prompt": p, "tests": t} for p, t in CODE_TASKS])


if __name__ == "__main__":
    main()
