"""Loading and saving policies and tokenizers in the standard ``transformers`` format.

Safety: ``trust_remote_code`` is off unless the recipe turns it on, and weights are read and written as
safetensors only (``use_safetensors=True``): a checkpoint that has only pickled ``.bin`` weights is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import LoraConfig, ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{path}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path, config: ModelConfig | None = None, adapter: str | Path | None = None):
    """A causal LM from a local folder; ``adapter`` loads trainable LoRA weights saved by peft on top."""
    from transformers import AutoModelForCausalLM

    config = config or ModelConfig()
    kwargs: dict[str, Any] = {
        "dtype": DTYPES[config.dtype],
        "trust_remote_code": config.trust_remote_code,
        "use_safetensors": True,
    }
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    elif config.lora is not None:
        model = add_lora(model, config.lora)
    return model


def add_lora(model, lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def save_policy(model, tokenizer, out_dir: str | Path, merge_lora: bool = False, state_dict: dict | None = None) -> Path:
    """``save_pretrained`` the model (safetensors) and tokenizer. LoRA models save the adapter, or the
    merged full model with ``merge_lora=True``. ``state_dict``: the full weights when the model's own are
    sharded (FSDP2), gathered beforehand on every process."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)
    if merge_lora and is_peft(model):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    if state_dict is not None and getattr(model.config, "tie_word_embeddings", False):
        tied = getattr(model, "_tied_weights_keys", None) or {}
        state_dict = {k: v for k, v in state_dict.items() if k not in tied}  # saved once, as save_pretrained does
    model.save_pretrained(out, safe_serialization=True, **({"state_dict": state_dict} if state_dict is not None else {}))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def load_policy_for_inference(path: str | Path, dtype: str = "float32", trust_remote_code: bool = False):
    """A saved policy (full model or LoRA adapter folder) ready for generation/scoring."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        import json

        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = AutoModelForCausalLM.from_pretrained(base, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=True)
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    else:
        model = load_causal_lm(path, ModelConfig(dtype=dtype, trust_remote_code=trust_remote_code))
    model.eval()
    return model
