"""Tiny tokenizers and causal LMs built offline, with the same ``transformers`` classes a user loads.

Used by the tests, the demo and the benchmarks: no hub access is needed. The tokenizer is a byte-level
BPE trained with ``tokenizers`` on the task's own text, with pad/eos tokens and a chat template; the model
is a randomly initialised Llama or Qwen2 causal LM. Both are written with ``save_pretrained`` (weights as
safetensors), so every other code path loads them exactly like a real checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..config import TinyModelConfig
from ..core.files import fsync_dir, fsync_tree

PAD, EOS, BOS = "<|pad|>", "<|endoftext|>", "<|startoftext|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Each turn: <|role|>content<|end|>; the generation prompt opens an assistant turn. The assistant turn
# is wrapped in {% generation %} so `return_assistant_tokens_mask` marks exactly the trained tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{% else %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, BOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        additional_special_tokens=ROLE_TOKENS,
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, config: TinyModelConfig | None = None):
    """A randomly initialised causal LM sized for ``tokenizer``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config = config or TinyModelConfig()
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    hf_config = LlamaConfig(**common) if config.arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_config(hf_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_tiny(
    out_dir: str | Path,
    texts: Iterable[str],
    config: TinyModelConfig | None = None,
) -> Path:
    """Build a tokenizer on ``texts`` and a tiny model, and ``save_pretrained`` both into ``out_dir``.

    The folder appears only when complete: both are written into ``<out_dir>.tmp``, fsynced, and renamed
    to ``out_dir`` (into an existing non-empty folder the files are moved one by one, ``config.json``
    last, and other files there are kept)."""
    import shutil

    config = config or TinyModelConfig()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    tokenizer = build_tokenizer(texts, config.vocab_size)
    model = build_model(tokenizer, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists() and any(out.iterdir()):
        names = sorted((p.name for p in tmp.iterdir()), key=lambda name: name == "config.json")
        for name in names:
            os.replace(tmp / name, out / name)
        tmp.rmdir()
    else:
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    fsync_dir(out.parent)
    return out
