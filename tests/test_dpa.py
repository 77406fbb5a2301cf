"""DPA (feedback.method: dpa): directions and their prompts, the selection by v·r worked out by hand, the
rejection-sampling targets of a real round, and bad settings."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from alignkit.algorithms import build_algorithm
from alignkit.algorithms.feedback.dpa import direction, direction_prompt, select_best
from alignkit.config import load_recipe
from alignkit.data.encode import Encoder, encode_records
from alignkit.data.records import load_records
from alignkit.tasks import get_task

P = "review of the soup :"


def dpa(*overrides):
    return build_algorithm(load_recipe({"algorithm": "feedback"}, ["task.name=multi_objective", "feedback.method=dpa", "data.kind=sft", "data.max_length=128",
                                                                   "data.train=rows.jsonl", *overrides]))


def test_directions_are_unit_vectors_written_into_the_prompt():
    assert direction(0) == pytest.approx([1.0, 0.0]) and direction(90) == pytest.approx([0.0, 1.0], abs=1e-12)
    v = direction(30)
    assert v == pytest.approx([math.sqrt(3) / 2, 0.5]) and sum(x * x for x in v) == pytest.approx(1.0)
    assert direction_prompt("<v {direction}> {prompt}", P, v) == f"<v 0.87 0.50> {P}"
    assert direction_prompt("[{direction}] {prompt}", P, [0.6, 0.8], digits=1) == f"[0.6 0.8] {P}"


def test_the_words_encoding_writes_the_nearest_angle_buckets_word():
    words = ["A", "B", "C", "D", "E"]  # bucket centres 0, 22.5, 45, 67.5, 90 degrees over [0, 90]
    by_angle = {0: "A", 11: "A", 12: "B", 30: "B", 34: "C", 45: "C", 56: "C", 57: "D", 80: "E", 90: "E"}
    for theta, word in by_angle.items():
        assert direction_prompt("<v {direction}> {prompt}", P, direction(theta), encoding="words", words=words, angle_range=(0, 90)) == f"<v {word}> {P}"
    # three buckets over [30, 60]: centres 30, 45, 60; angles outside the range clip to the end buckets
    three = {"words": ["lo", "mid", "hi"], "angle_range": (30, 60)}
    assert [direction_prompt("{direction}", "", direction(t), encoding="words", **three) for t in (0, 37, 38, 52, 53, 90)] == ["lo", "lo", "mid", "mid", "hi", "hi"]
    # the direction's length does not matter, only its angle
    assert direction_prompt("{direction}", "", [3.0, 3.0], encoding="words", words=words) == "C"
    # the decimal form stays the default
    assert direction_prompt("<v {direction}> {prompt}", P, direction(30)) == f"<v 0.87 0.50> {P}"


def test_the_words_encoding_reaches_the_training_prompts_and_conditioning(tmp_path):
    algo = dpa("feedback.dpa.encoding=words", "feedback.dpa.words=[north,mid,east]", f"train.output_dir={tmp_path}")
    # inference direction = the middle of [0, 90] = 45 degrees -> the middle word
    assert algo.inference_prompt("{prompt}") == "<v mid> {prompt}"
    assert algo.inference_prompt(P) == f"<v mid> {P}"


def test_selection_maximises_v_dot_r_by_hand():
    # two prompts, three samples, (sentiment, brevity)
    r = torch.tensor([[[1.0, 0.0], [0.3, 1.0], [0.5, 0.5]],
                      [[1.0, 0.0], [0.3, 1.0], [0.5, 0.5]]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert select_best(r, v).tolist() == [0, 1]  # all sentiment: 1.0 > 0.5 > 0.3; all brevity: 1.0 > 0.5 > 0
    diagonal = torch.tensor([[math.cos(math.radians(45)), math.sin(math.radians(45))]])
    # 45 degrees: v.r = 0.707, 0.919, 0.707 -> the second
    assert select_best(r[:1], diagonal).tolist() == [1]
    ties = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])
    assert select_best(ties, diagonal).tolist() == [0]  # ties go to the earlier sample


class FixedSamples:
    """A stand-in sampler: the same three completions for every prompt (what generate returns, in order)."""

    TEXTS = [" the soup was great and the bread was superb and the staff was lovely .", " the soup was fine .", " the soup was superb ."]


def test_a_round_trains_each_prompt_on_its_directions_best_sample(tokenizer, tiny_dir, tmp_path, monkeypatch):
    import importlib

    gen = importlib.import_module("alignkit.rollout.generate")  # the module (the package exports a function of that name)

    drawn_prompts = []

    def fake_generate(model, tok, prompts, n, **kw):
        drawn_prompts.extend(prompts)
        return [SimpleNamespace(prompt=p, completion=FixedSamples.TEXTS[j]) for p in prompts for j in range(n)]

    monkeypatch.setattr(gen, "generate", fake_generate)
    algo = dpa("feedback.dpa.samples=3", f"train.output_dir={tmp_path}", "train.max_steps=1")
    rows = [{"prompt": P, "completion": " the soup was okay ."} for _ in range(6)]
    records, _ = load_records(rows, kind="sft")
    examples = algo.prepare_examples(encode_records(records, "sft", Encoder(tokenizer, 128)), "sft")
    for i, e in enumerate(examples):
        e["index"] = i
    ctx = SimpleNamespace(tokenizer=tokenizer, model=None, train_examples=examples, eval_examples=None, strategy=SimpleNamespace(is_main=True))
    algo.setup(ctx)
    task = get_task("multi_objective")
    # gold attributes of the three samples: (1 + 1 + 0.75)/3 = 0.917, brevity 0; (0.25/3, 1); (1/3, 1)
    attrs = [task.attribute_rewards(P, t) for t in FixedSamples.TEXTS]
    assert [a["brevity"] for a in attrs] == [0.0, 1.0, 1.0] and attrs[0]["sentiment"] == pytest.approx(2.75 / 3)
    for e, asked in zip(examples, drawn_prompts, strict=True):
        v = e["dpa_direction"]
        assert asked == direction_prompt("<v {direction}> {prompt}", P, v)
        values = [v[0] * a["sentiment"] + v[1] * a["brevity"] for a in attrs]
        assert e["target"] == FixedSamples.TEXTS[max(range(3), key=lambda j: (values[j], -j))]
        trained = tokenizer.decode([t for t, m in zip(e["input_ids"], e["loss_mask"]) if m])
        assert trained == e["target"] + tokenizer.eos_token and tokenizer.decode(e["prompt_ids"]) == asked
    angles = [math.degrees(math.atan2(e["dpa_direction"][1], e["dpa_direction"][0])) for e in examples]
    assert all(0 <= a <= 90 for a in angles) and len(set(round(a, 6) for a in angles)) == 6  # one direction per row
    # a direction near sentiment picks the long positive review, one near brevity the one-clause superb
    stats = json.loads((tmp_path / "dpa_rounds.jsonl").read_text().splitlines()[0])
    assert stats["rows"] == 6 and stats["value/selected"] >= stats["value/sampled"]
    assert json.loads((tmp_path / "conditioning.json").read_text())["template"] == "<v 0.71 0.71> {prompt}"
    # the stream of directions is a function of (seed, split, round, row): a second build draws the same ones
    again = dpa("feedback.dpa.samples=3", f"train.output_dir={tmp_path}")
    assert [again.draw_direction(e, "train") for e in examples] == [e["dpa_direction"] for e in examples]


@pytest.mark.parametrize("overrides, match", [
    (["feedback.dpa.attributes=[sentiment]"], "over two attributes"),
    (["feedback.dpa.attributes=[sentiment,sentiment]"], "distinct attribute names"),
    (["feedback.dpa.angle_range=[60,10]"], "low <= high"),
    (["feedback.dpa.inference_direction=[1,0,0]"], "one component per attribute"),
    (["feedback.dpa.template='{prompt} only'"], r"must hold \{direction\}, \{prompt\}"),
    (["feedback.dpa.encoding=angles"], "unknown DPA direction encoding 'angles'.*allowed: decimal, words"),
    (["feedback.dpa.encoding=words", "feedback.dpa.words=[A,A]"], "distinct bucket words"),
])
def test_bad_settings_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        dpa(*overrides)


def test_an_unknown_attribute_is_named(tokenizer, monkeypatch, tmp_path):
    algo = dpa("feedback.dpa.attributes=[sentiment,length]", f"train.output_dir={tmp_path}")
    with pytest.raises(ValueError, match="no gold attribute 'length'; it has sentiment, brevity"):
        algo.scores([P], [" the soup was fine ."])
