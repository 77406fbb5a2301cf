"""Trajectories (multi-turn, tool-using conversations) for DPO, KTO and SFT: loss masks from the chat
template's assistant spans, pairs that diverge at any turn, errors for malformed trajectories, and the
M-DPO / M-KTO recipes (docs/trajectories.md)."""

import json
import math
from pathlib import Path

import pytest
import torch

from alignkit.data.collate import collate_pairs, collate_pairs_packed
from alignkit.data.encode import Encoder
from alignkit.data.errors import DataError
from alignkit.data.records import load_records
from alignkit.data.trajectory import pairs_from_scored

ROOT = Path(__file__).resolve().parents[1]
CALL_TEXT = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "3 + 4"}}\n</tool_call>'


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def call(expression="3 + 4", call_id=None):
    c = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": expression}}}
    if call_id:
        c["id"] = call_id
    return {"role": "assistant", "content": "", "tool_calls": [c]}


def tool(text, call_id=None):
    return {"role": "tool", "content": text, **({"tool_call_id": call_id} if call_id else {})}


PROMPT = [user("What is 3 + 4?")]
CHOSEN = [call(), tool("7"), assistant("It is 7.")]
REJECTED = [assistant("It is 8.")]


def pieces_to_ids(tok, pieces):
    """(ids, mask) of a rendering written out by hand as (text, trained) pieces, each tokenized alone."""
    ids, mask = [], []
    for text, trained in pieces:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [int(trained)] * len(piece)
    return ids, mask


# The tiny template: <|role|>content<|end|>; the tool call written as text (the template ignores tool_calls).
TINY_CHOSEN = [("<|user|>", 0), ("What is 3 + 4?", 0), ("<|end|>", 0), ("<|assistant|>", 0),  # the prompt
               (CALL_TEXT, 1), ("<|end|>", 1),  # assistant turn 1: the call, trained
               ("<|tool|>7", 0), ("<|end|>", 0), ("<|assistant|>", 0),  # the tool's result and the next header: context
               ("It is 7.", 1), ("<|end|>", 1)]  # assistant turn 2, trained
N_PROMPT_PIECES = 4


def encode_pair(tokenizer, row, max_length=512, truncation="error"):
    records, _ = load_records([row], kind="pair")
    example = Encoder(tokenizer, max_length, truncation).encode(records[0], "pair")
    example["index"] = 0
    return example


def test_pair_masks_by_hand(tokenizer):
    example = encode_pair(tokenizer, {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED})
    ids, mask = pieces_to_ids(tokenizer, TINY_CHOSEN)
    n_prompt = len(pieces_to_ids(tokenizer, TINY_CHOSEN[:N_PROMPT_PIECES])[0])
    assert example["prompt_ids"] == ids[:n_prompt]
    assert example["chosen_ids"] == ids[n_prompt:]
    assert example["chosen_mask"] == mask[n_prompt:]
    assert "rejected_mask" not in example  # a single assistant turn: every token trained, as before
    # both batch layouts train exactly these tokens
    padded = collate_pairs([example], tokenizer.pad_token_id)
    assert padded["loss_mask"][0, : len(ids)].tolist() == [0] * n_prompt + mask[n_prompt:]
    packed = collate_pairs_packed([example], tokenizer.pad_token_id)
    assert packed["chosen_tokens"].item() == sum(mask) and packed["rejected_tokens"].item() == len(example["rejected_ids"])
    targets = packed["loss_mask"][0].bool() & (packed["segment"][0] == 1)
    assert targets[n_prompt : len(ids)].tolist() == [bool(m) for m in mask[n_prompt:]]


def test_right_truncation_cuts_the_mask_with_the_reply(tokenizer):
    full = encode_pair(tokenizer, {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED})
    keep = 20
    cut = encode_pair(tokenizer, {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}, len(full["prompt_ids"]) + keep, "right")
    assert cut["chosen_ids"] == full["chosen_ids"][:keep] and cut["chosen_mask"] == full["chosen_mask"][:keep]


def test_whole_trajectories_diverge_at_any_turn(tokenizer):
    """Two whole trajectories (no prompt): the shared turns are the prompt, wherever they diverge."""
    head = [{"role": "system", "content": "Use the calculator."}, *PROMPT]
    late = {"chosen": head + [call(), tool("7"), assistant("It is 7.")], "rejected": head + [call(), tool("7"), assistant("It is 8.")]}
    records, _ = load_records([late], kind="pair")
    assert records[0]["prompt"] == head + [call(), tool("7")]  # diverged at the last turn: the tool result is prompt
    assert records[0]["chosen"] == [assistant("It is 7.")]
    early = {"chosen": head + CHOSEN, "rejected": head + [call("3 * 4"), tool("12"), assistant("It is 12.")]}
    records, _ = load_records([early], kind="pair")
    assert records[0]["prompt"] == head and records[0]["rejected"][0] == call("3 * 4")
    example = Encoder(tokenizer, 512).encode(records[0], "pair")
    for side in ("chosen", "rejected"):
        trained = tokenizer.decode([t for t, m in zip(example[f"{side}_ids"], example[f"{side}_mask"]) if m])
        untrained = tokenizer.decode([t for t, m in zip(example[f"{side}_ids"], example[f"{side}_mask"]) if not m])
        result = "7" if side == "chosen" else "12"
        assert untrained == f"<|tool|>{result}<|end|><|assistant|>"
        assert trained.endswith(f"<|end|>It is {result}.<|end|>") and trained.startswith("<tool_call>")


def test_multi_turn_sft_trains_every_assistant_turn(tokenizer):
    records, _ = load_records([{"messages": PROMPT + CHOSEN}], kind="sft")
    example = Encoder(tokenizer, 512).encode(records[0], "sft")
    assert (example["input_ids"], example["loss_mask"]) == pieces_to_ids(tokenizer, TINY_CHOSEN)


def test_unpaired_trajectory_prompt_is_what_precedes_the_first_assistant_turn(tokenizer):
    records, _ = load_records([{"messages": PROMPT + CHOSEN, "label": True, "task": "3 + 4"}], kind="unpaired")
    assert records[0]["prompt"] == PROMPT and records[0]["completion"] == CHOSEN and records[0]["meta"] == {"task": "3 + 4"}
    example = Encoder(tokenizer, 512).encode(records[0], "unpaired")
    ids, mask = pieces_to_ids(tokenizer, TINY_CHOSEN)
    n_prompt = len(pieces_to_ids(tokenizer, TINY_CHOSEN[:N_PROMPT_PIECES])[0])
    assert example["input_ids"] == ids and example["loss_mask"] == [0] * n_prompt + mask[n_prompt:] and example["label"] is True


def test_smollm2_template_masks(smollm2):
    """SmolLM2's ChatML template (a default system turn, <|im_start|>role\\n ... <|im_end|>\\n): the trained
    spans are each assistant turn's content and its end marker (with the template's newline after it)."""
    from alignkit.models.loading import load_tokenizer

    tok = load_tokenizer(smollm2)
    example = encode_pair(tok, {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED})
    spans, current = [], []
    for t, m in zip(example["chosen_ids"], example["chosen_mask"]):
        if m:
            current.append(t)
        elif current:
            spans.append(tok.decode(current))
            current = []
    spans.append(tok.decode(current))
    assert spans == [CALL_TEXT + "<|im_end|>\n", "It is 7.<|im_end|>\n"]
    untrained = tok.decode([t for t, m in zip(example["chosen_ids"], example["chosen_mask"]) if not m])
    assert untrained == "<|im_start|>tool\n7<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(example["prompt_ids"]).endswith("<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n")


BAD = [
    ({"prompt": PROMPT + [tool("7")], "chosen": [assistant("7")], "rejected": REJECTED},
     "field 'prompt[1].role': a tool message with no tool call before it (a tool result answers a tool_calls entry of the assistant "
     "turn just before; write other observations as user turns)"),
    ({"prompt": PROMPT, "chosen": [assistant("let me see"), tool("7"), assistant("7")], "rejected": REJECTED},
     "field 'chosen[1].role': a tool message with no tool call before it (a tool result answers a tool_calls entry of the assistant "
     "turn just before; write other observations as user turns)"),
    ({"prompt": PROMPT, "chosen": [call(), tool("7"), tool("8"), assistant("7")], "rejected": REJECTED},
     "field 'chosen[2].role': more tool results than the assistant turn before made tool calls"),
    ({"prompt": PROMPT, "chosen": [call(call_id="a"), tool("7", call_id="b"), assistant("7")], "rejected": REJECTED},
     "field 'chosen[1].tool_call_id': 'b' answers none of the open tool calls ('a')"),
    ({"prompt": PROMPT, "chosen": [call(), tool("7"), assistant("  ")], "rejected": REJECTED},
     "field 'chosen[2]': an empty assistant turn (no content and no tool calls)"),
    ({"prompt": PROMPT, "chosen": [call(), tool("7")], "rejected": REJECTED},
     "field 'chosen[1].role': the reply ends with a 'tool' turn: a trajectory's last turn is the assistant's (drop the trailing observation)"),
    ({"prompt": PROMPT, "chosen": [call(), {"role": "system", "content": "be brief"}, assistant("7")], "rejected": REJECTED},
     "field 'chosen[1].role': a 'system' turn after the conversation started (system and developer messages come first)"),
    ({"messages": [assistant("hi"), user("x"), assistant("y"), tool("z")], "label": True},
     "field 'messages[3].role': a tool message with no tool call before it (a tool result answers a tool_calls entry of the assistant "
     "turn just before; write other observations as user turns)"),
    ({"messages": [call(), tool("7"), assistant("7")], "label": False},
     "field 'messages[0]': starts with an assistant turn: a trajectory starts with the task (a user turn)"),
]


@pytest.mark.parametrize("row, message", BAD, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(BAD)])
def test_bad_trajectories_name_file_row_and_field(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        load_records(path, kind="unpaired" if "messages" in row else "pair")
    assert str(e.value) == f"{path}: row 1: {message}"


def test_sft_messages_get_the_same_checks():
    with pytest.raises(DataError, match=r"row 1: field 'messages\[1\].role': a tool message with no tool call before it"):
        load_records([{"messages": [user("x"), tool("7"), assistant("7")]}], kind="sft")


# --------------------------------------------------------------------------------------------------
# the log-probs of the DPO margin
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy(tiny_dir):
    from transformers import AutoModelForCausalLM

    from alignkit.models.logprobs import TargetLogProbs

    torch.manual_seed(0)
    return TargetLogProbs(AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval())


def dpo(packing):
    from alignkit.algorithms.dpo import DPO
    from alignkit.config import load_recipe

    return DPO(load_recipe({"algorithm": "dpo"}, [f"dpo.packing={str(packing).lower()}", "dpo.beta=0.5"]))


@pytest.mark.parametrize("packing", [True, False])
def test_margin_sums_only_assistant_tokens_and_env_logits_get_no_gradient(tokenizer, policy, packing):
    """The policy log-prob of each side is the sum over its assistant tokens (checked against an unmasked
    full forward), and the DPO loss's gradient w.r.t. the final hidden states (hence the logits) at every
    position that predicts a tool/env token is exactly zero."""
    example = encode_pair(tokenizer, {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED})
    algorithm = dpo(packing)
    batch = algorithm.collate([example], tokenizer.pad_token_id)
    batch["ref_chosen"], batch["ref_rejected"] = torch.tensor([-5.0]), torch.tensor([-3.0])

    ids = torch.tensor([example["prompt_ids"] + example["chosen_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(policy.model(ids).logits[0].float(), -1)
    n_prompt = len(example["prompt_ids"])
    token_logps = [logp[t - 1, ids[0, t]].item() for t in range(n_prompt, ids.shape[1])]
    by_hand = sum(lp for lp, m in zip(token_logps, example["chosen_mask"]) if m)
    everything = sum(token_logps)

    hidden = {}
    decoder = policy.model.get_decoder()
    def keep(module, args, out):
        hidden.setdefault("h", out.last_hidden_state)

    handle = decoder.register_forward_hook(keep)
    try:
        from alignkit.algorithms.dpo import pair_logps

        chosen, rejected, n_chosen, _ = pair_logps(policy, batch)
        hidden.clear()
        loss, _ = algorithm.loss(policy, batch)
        h = hidden["h"]
        h.retain_grad()
        loss.backward()
    finally:
        handle.remove()
        policy.model.zero_grad()
    assert chosen.item() == pytest.approx(by_hand, abs=1e-4) and n_chosen.item() == sum(example["chosen_mask"])
    assert abs(everything - by_hand) > 1.0  # the tool turn's tokens would have counted
    grad = h.grad[0].abs().sum(-1)  # [T] of the chosen sequence's row (row 0 in both layouts)
    for j, m in enumerate(example["chosen_mask"]):
        source = n_prompt + j - 1  # the position whose state predicts chosen token j
        assert (grad[source] == 0) == (not m), (j, m)


@pytest.mark.slow
def test_dpo_first_step_is_log_2_and_kto_runs_on_trajectories(tmp_path):
    """The M-DPO and M-KTO recipes run as written (shortened); DPO's first loss is log 2 (the reference is
    the starting policy), KTO's 1 - sigmoid(0) = 0.5."""
    from alignkit.algorithms import train
    from alignkit.config import load_recipe

    for name, first in (("multiturn_dpo.yaml", math.log(2)), ("multiturn_kto.yaml", 0.5)):
        out = tmp_path / name
        train(load_recipe(ROOT / "recipes" / "trajectory" / name, [
            f"train.output_dir={out}", "train.max_steps=1", "train.batch_size=2", "train.progress=false"]))
        losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
        assert losses[0] == pytest.approx(first, abs=1e-5), name
        assert (out / "final").exists()


def test_recipe_data_is_what_make_data_writes(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_data", ROOT / "recipes" / "trajectory" / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "DATA", tmp_path)
    module.main()
    for name in ("trajectory_pairs.jsonl", "trajectory_thumbs.jsonl", "code_tasks.jsonl"):
        assert (tmp_path / name).read_text() == (ROOT / "recipes" / "data" / name).read_text(), name
    records, _ = load_records(ROOT / "recipes" / "data" / "trajectory_pairs.jsonl", kind="pair")
    styles = {r["meta"]["style"] for r in records}
    assert styles == {"wrong_answer", "no_tool", "wrong_call"}
    assert all(r["chosen"][-1]["content"] != r["rejected"][-1]["content"] for r in records)


def test_pairs_from_scored_trajectories():
    rows = [{"task": "a", "messages": PROMPT + [assistant("It is 7.")], "reward": 1.0},
            {"task": "a", "messages": PROMPT + [assistant("It is 8.")], "reward": 0.0},
            {"task": "a", "messages": PROMPT + CHOSEN, "reward": 1.0},
            {"task": "b", "messages": PROMPT + [assistant("x")], "reward": 0.5}]
    pairs = pairs_from_scored(rows)
    assert pairs == [{"chosen": PROMPT + [assistant("It is 7.")], "rejected": PROMPT + [assistant("It is 8.")], "margin": 1.0, "task": "a"}]
    records, _ = load_records(pairs, kind="pair")
    assert records[0]["prompt"] == PROMPT
