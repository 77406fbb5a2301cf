"""Record kinds as registrations, metadata that travels to the batch, and the shared pair-labelling helper."""

import json
import math
import random

import pytest
import torch

from alignkit.config import TaskConfig
from alignkit.data.collate import collate_pairs, collate_pairs_packed, collate_sft
from alignkit.data.encode import Encoder, encode_records
from alignkit.data.kinds import RECORD_KINDS, check_row, infer_kind, register_kind
from alignkit.data.records import DataError, load_records
from alignkit.tasks import TASKS, Task, bt_probability, get_task, label_pairs, task_rows

P = "review of the soup :"


# --------------------------------------------------------------------------------------------------
# the kind registry
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def critique_kind():
    """A new kind, registered for one test: prompt + completion + a critique that must not be empty."""

    def check(data, ctx):
        critique = data["critique"]
        if not isinstance(critique, str) or not critique.strip():
            raise ctx.error("critique", "expected a non-empty string")
        return {"prompt": ctx.text(data, "prompt"), "completion": ctx.text(data, "completion"), "critique": critique}

    def encode(encoder, record):
        prompt = encoder.prompt_ids(record["prompt"])
        completion = encoder.completion_ids(record["prompt"], prompt, record["completion"], record["_row"], "completion")
        return {"prompt_ids": prompt, "input_ids": prompt + completion, "loss_mask": [0] * len(prompt) + [1] * len(completion),
                "critique_ids": encoder.prompt_ids(record["critique"])}

    kind = register_kind("critique_test", fields=("prompt", "completion", "critique"), required=("prompt", "completion", "critique"),
                         check=check, encode=encode, infer=((5, lambda d: "critique" in d),))
    yield kind
    RECORD_KINDS._entries.pop("critique_test")


def test_a_registered_kind_works_end_to_end(critique_kind, tokenizer):
    rows = [{"prompt": P, "completion": " the soup was good .", "critique": "too short", "user": "u1"},
            {"prompt": P, "completion": " the soup was bad .", "critique": " "},
            {"prompt": P, "completion": " the soup was fine ."}]
    assert infer_kind(rows[0]) == "critique_test"  # its inference rule runs before sft's
    records, summary = load_records(rows, kind="critique_test", skip_invalid=True)
    assert [r["_row"] for r in records] == [1] and summary.n_skipped == 2
    assert records[0]["meta"] == {"user": "u1"}
    with pytest.raises(DataError, match=r"<list>: row 3: field 'critique': missing"):
        load_records([rows[0], rows[0], rows[2]], kind="critique_test")
    with pytest.raises(DataError, match=r"row 2: field 'critique': expected a non-empty string"):
        load_records(rows[:2], kind="critique_test")
    auto, _ = load_records(rows[:1])  # kind="auto" infers the new kind
    (example,) = encode_records(auto, "critique_test", Encoder(tokenizer, 64))
    assert tokenizer.decode(example["critique_ids"]) == "too short" and example["row"] == 1
    assert example["meta"] == {"user": "u1"}
    assert "critique_test" in RECORD_KINDS.names()


def test_unknown_kind_errors_name_the_allowed_kinds(tokenizer):
    with pytest.raises(ValueError, match=r"unknown data kind 'pairs' \(did you mean 'pair'\?\); allowed: auto, (\w+, )*pair, prompt"):
        load_records([{"prompt": P}], kind="pairs")
    with pytest.raises(ValueError, match="unknown data kind 'nope'"):
        Encoder(tokenizer, 64).encode({"prompt": P}, "nope")
    with pytest.raises(ValueError, match="already registered"):
        register_kind("pair", fields=(), required=(), check=None, encode=None)


def test_inference_matches_the_documented_order():
    assert infer_kind({"messages": [], "chosen": "a"}) == "sft"
    assert infer_kind({"prompt": P, "chosen": "a", "rejected": "b", "completion": "c"}) == "pair"
    assert infer_kind({"prompt": P, "completions": ["a"], "label": True}) == "ranked"
    assert infer_kind({"prompt": P, "completion": "a", "label": True}) == "unpaired"
    assert infer_kind({"prompt": P, "completion": "a"}) == "sft"
    assert infer_kind({"prompt": P, "answer": 3}) == "prompt"


def test_ratings_and_steps_kinds_check_rows():
    row = {"prompt": P, "completion": " a .", "ratings": {"helpful": 2}, "note": "x"}
    ok = check_row(row, "ratings", "f.jsonl", 4, attributes=["helpful", "safe"])
    assert ok["ratings"] == [2.0, 0.0] and ok["rating_mask"] == [1.0, 0.0] and ok["meta"] == {"note": "x"}
    columns = check_row({"prompt": P, "completion": " a .", "safe": 1}, "ratings", "f.jsonl", 4, attributes=["helpful", "safe"])
    assert columns["rating_mask"] == [0.0, 1.0] and "meta" not in columns  # an attribute column is not metadata
    with pytest.raises(DataError, match=r"f.jsonl: row 4: field 'ratings': unknown attribute\(s\) funny"):
        check_row({"prompt": P, "completion": " a .", "ratings": {"funny": 1}}, "ratings", "f.jsonl", 4, attributes=["helpful"])
    with pytest.raises(ValueError, match="attribute names"):
        check_row({"prompt": P, "completion": " a ."}, "ratings", "f.jsonl", 4)
    steps = check_row({"prompt": P, "completion": "a\nb", "labels": [True, 0]}, "steps", "s.jsonl", 1)
    assert steps["steps"] == ["a\n", "b"] and steps["labels"] == [1.0, 0.0]
    records, _ = load_records([{"prompt": P, "completion": "x and y", "labels": [1, 0]}], kind="steps", step_split=r"(?= and )")
    assert records[0]["steps"] == ["x", " and y"]


# --------------------------------------------------------------------------------------------------
# metadata travels from the row to the batch
# --------------------------------------------------------------------------------------------------
def test_pluralistic_group_reaches_the_collated_pair_batch(tokenizer):
    config = TaskConfig(name="pluralistic", seed=1)
    rows = task_rows(get_task(config), "pair", 8, "train", config)
    assert all("group" in r for r in rows)
    records, _ = load_records(rows, kind="pair")
    assert [r["meta"]["group"] for r in records] == [r["group"] for r in rows]
    assert all("group" not in r for r in records)  # metadata, not a schema field
    examples = encode_records(records, "pair", Encoder(tokenizer, 64))
    for i, e in enumerate(examples):
        e["index"] = i
    json.dumps(records), json.dumps(examples)  # records and examples stay JSON-able
    padded = collate_pairs(examples, tokenizer.pad_token_id)
    assert padded["meta"]["group"] == [r["group"] for r in rows]  # one per pair, in batch order
    packed = collate_pairs_packed(examples, tokenizer.pad_token_id, row_tokens=200)
    assert packed["meta"]["group"] == [r["group"] for r in rows]


def test_numeric_metadata_becomes_a_tensor_and_missing_values_a_list(tokenizer):
    rows = [{"prompt": P, "completion": " the soup was good .", "user_id": 3, "score": 0.5, "system": "be brief"},
            {"prompt": P, "completion": " the soup was bad .", "user_id": 7, "score": 2}]
    records, _ = load_records(rows, kind="sft")
    examples = encode_records(records, "sft", Encoder(tokenizer, 64))
    batch = collate_sft(examples, tokenizer.pad_token_id)
    assert torch.equal(batch["meta"]["user_id"], torch.tensor([3, 7]))
    assert batch["meta"]["score"].tolist() == [0.5, 2.0]
    assert batch["meta"]["system"] == ["be brief", None]
    plain, _ = load_records([{"prompt": P, "completion": " the soup was good ."}], kind="sft")
    assert "meta" not in collate_sft(encode_records(plain, "sft", Encoder(tokenizer, 64)), tokenizer.pad_token_id)


def test_prompt_kind_keeps_extra_fields_at_the_top_level(tokenizer):
    records, _ = load_records([{"prompt": "2 + 2 =", "answer": 4}], kind="prompt")
    example = encode_records(records, "prompt", Encoder(tokenizer, 64))[0]
    assert example["answer"] == 4 and "meta" not in example


def test_skip_invalid_counts_rows_with_metadata(tmp_path):
    rows = [{"prompt": P, "chosen": "a", "rejected": "b", "group": "g"}, {"prompt": P, "chosen": "a", "group": "g"}]
    records, summary = load_records(rows, kind="pair", skip_invalid=True)
    assert len(records) == 1 and summary.n_skipped == 1 and "rejected: missing" in str(summary)


# --------------------------------------------------------------------------------------------------
# the pair-labelling helper and the task protocol
# --------------------------------------------------------------------------------------------------
def test_bradley_terry_probability_by_hand():
    # rewards 1.0 vs 0.0 at temperature 0.5: P = 1 / (1 + e^-2)
    assert bt_probability(1.0, 0.0, 0.5) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert bt_probability(1.0, 0.0, 0.5) == pytest.approx(0.8808, abs=1e-4)
    assert bt_probability(0.0, 1.0, 0.5) == pytest.approx(1 - 0.8808, abs=1e-4)
    assert bt_probability(-800.0, 800.0, 1.0) == 0.0  # no overflow


def test_label_pairs_draws_with_the_judges_probability():
    rewards = {"good": 1.0, "bad": 0.0}
    judge = lambda p, a, b, rng: (bt_probability(rewards[a], rewards[b], 0.5), {"judge": "bt"})  # noqa: E731
    n = 20000
    rows = label_pairs(["p"] * n, ["good"] * n, ["bad"] * n, judge, seed=0, salt="t")
    share = sum(r["chosen"] == "good" for r in rows) / n
    assert abs(share - 0.8808) < 3 * math.sqrt(0.8808 * 0.1192 / n)  # within 3 standard errors
    assert all(r["judge"] == "bt" for r in rows)
    assert rows == label_pairs(["p"] * n, ["good"] * n, ["bad"] * n, judge, seed=0, salt="t")  # deterministic
    assert label_pairs(["p", "p"], ["x", "good"], ["x", "bad"], judge, seed=0, salt="t")[0]["prompt"] == "p"
    assert len(label_pairs(["p", "p"], ["x", "good"], ["x", "bad"], judge, seed=0, salt="t")) == 1  # identical pair dropped
    assert label_pairs(["p"], ["good"], ["bad"], lambda *a: None, seed=0, salt="t") == []  # the judge leaves it out
    flipped = label_pairs(["p"] * 10, ["good"] * 10, ["bad"] * 10, lambda *a: (1.0, {}), seed=0, salt="t", label_noise=1.0)
    assert all(r["chosen"] == "bad" for r in flipped)


def test_every_task_follows_the_protocol():
    for name in TASKS:
        task = get_task(TaskConfig(name=name))
        assert isinstance(task, Task) and task.name == name
        rng = random.Random(0)
        prompts = task.prompts(4)
        rows = task.label_pairs(prompts, [task.sample_completion(p, rng) for p in prompts], [task.sample_completion(p, rng) for p in prompts], seed=1)
        assert all({"prompt", "chosen", "rejected"} <= set(r) for r in rows)
    assert get_task("sentiment").reward_attributes == ("sentiment", "verbosity")
    assert get_task("sentiment").reward_step_split and get_task("multi_objective").reward_attributes is None
    with pytest.raises(ValueError, match=r"unknown task 'sentimen' \(did you mean 'sentiment'\?\)"):
        get_task("sentimen")


def test_reward_types_are_registered_classes(tiny_dir):
    from alignkit.algorithms.reward import REWARD_TYPES, RewardModelling
    from alignkit.config import load_recipe

    assert {"multi_objective", "preference", "process", "scalar", "mixture", "pal", "vpl"} <= set(REWARD_TYPES.names())
    for name in REWARD_TYPES:
        algo = RewardModelling(load_recipe({"algorithm": "reward", "reward": {"type": name}}))
        assert type(algo) is REWARD_TYPES.get(name) and isinstance(algo, RewardModelling)
    assert RewardModelling(load_recipe({"algorithm": "reward", "data": {"kind": "ranked"}})).data_kind == "ranked"
