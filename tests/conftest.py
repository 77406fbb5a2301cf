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
def tokenizer(tiny_dir):
    from alignkit.models.loading import load_tokenizer

    return load_tokenizer(tiny_dir)
