"""Loading and saving policies and tokenizers in the standard ``transformers`` format.

Safety: ``trust_remote_code`` is off unless the recipe turns it on, and weights are read and written as
safetensors only (``use_safetensors=True``): a checkpoint that has only pickled ``.bin`` weights is refused.

:func:`check_model_folder` runs before every load: a path that does not exist, is a file, has no (or an
unreadable) ``config.json``, has only ``pytorch_model.bin`` weights, or has a truncated ``.safetensors``
file is one :class:`ModelFolderError` line (a ``ValueError``) naming the folder, not a traceback.

A path that is not a local folder and has the form of a Hub id (``org/name``: no leading ``./``, ``/`` or
``~``, no file suffix, and ``org`` not a local folder) is resolved by :func:`resolve_model_path` to its
snapshot in the Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``), downloaded once when online;
with ``HF_HUB_OFFLINE=1`` and no cached copy it is one line saying so. Every loader here goes through it,
so ``model.path``, reference and reward-model folders, ``alignkit eval/generate MODEL``, judges and
``rl.ppo.dense_reward_model`` all accept the same two forms.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import torch

from ..config import LoraConfig, ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded; the message names it and what is wrong."""


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_FILE_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".safetensors", ".bin", ".pt", ".pth", ".gguf", ".csv", ".parquet", ".py", ".txt", ".md")
# what a snapshot download fetches: configs, tokenizer files, safetensors weights (never pickles)
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def looks_like_hub_id(path: str | Path) -> bool:
    """``org/name`` that is meant for the Hub rather than a local path: one slash, no leading ``./``, ``/``
    or ``~``, no file suffix, and ``org`` is not a local folder (``runs/sft`` with ``runs/`` present is a
    local path with a typo)."""
    text = str(path)
    if text.startswith((".", "/", "~")) or not _HUB_ID.match(text) or text.lower().endswith(_FILE_SUFFIXES):
        return False
    return not Path(text.split("/", 1)[0]).is_dir()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache_dir() -> str | None:
    """The Hub cache as the environment says now (``HF_HUB_CACHE``, else ``HF_HOME/hub``; None: the default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def resolve_model_path(path: str | Path, what: str = "model", code: bool = False) -> Path:
    """A local folder as it is; a Hub id (:func:`looks_like_hub_id`) as its snapshot folder in the Hub cache,
    downloaded once when online (configs, tokenizer files and safetensors weights; ``code=True`` adds the
    repository's ``*.py`` for ``trust_remote_code``). Anything else is returned unchanged, for
    :func:`check_model_folder` to name what is wrong with it."""
    local = Path(path).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        return gguf_folder(local)
    if local.exists() or not looks_like_hub_id(path):
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    repo = str(path)
    offline = _env_flag("HF_HUB_OFFLINE")
    try:
        folder = snapshot_download(repo, cache_dir=hub_cache_dir(), local_files_only=offline, allow_patterns=HUB_FILES + (["*.py"] if code else []))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        if offline:
            raise ModelFolderError(f"{what}: '{repo}' is not a local folder, and HF_HUB_OFFLINE=1 with no cached copy "
                                   "(download it once online, or give a local folder)") from None
        raise ModelFolderError(f"{what}: '{repo}' is not a local folder, and it is neither cached nor reachable on the Hub "
                               f"({' '.join(str(e).split())[:160]})") from None
    except (HfHubHTTPError, ValueError, OSError) as e:
        raise ModelFolderError(f"{what}: '{repo}' is not a local folder, nor a model the Hub gives out "
                               f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    return Path(folder)


def gguf_folder(file: Path) -> Path:
    """A ``.gguf`` file as a model source: converted once (``models/convert.py``) into a plain ``transformers``
    folder in the alignkit cache (``ALIGNKIT_CACHE``, else ``~/.cache/alignkit``; ``gguf/<name>-<key>``, the key
    from the file's absolute path, size and modification time), which later runs reuse."""
    import hashlib

    from .convert import convert_gguf

    stat = file.stat()
    key = hashlib.sha1(f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("ALIGNKIT_CACHE") or Path.home() / ".cache" / "alignkit").expanduser()
    folder = cache / "gguf" / f"{file.stem}-{key}"
    if (folder / "config.json").exists():
        return folder
    from ..core.progress import say

    say(f"{file}: a GGUF file; converting it once to a transformers folder in {folder} (reused next time)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    return convert_gguf(file, folder, quiet=True)


def _check_safetensors(file: Path) -> None:
    """The header of a ``.safetensors`` file is readable and the file holds every byte it declares."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ValueError(f"its header declares {n} bytes but the file has {size}")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ModelFolderError(f"{file}: not a readable safetensors file ({e})") from None
    if 8 + n + end > size:
        raise ModelFolderError(f"{file}: truncated safetensors file ({size} bytes, {8 + n + end} expected); copy or save the model again")


def check_model_folder(path: str | Path, what: str = "model", weights: bool = True) -> Path:
    """``path`` as a loadable ``transformers`` folder (config.json, safetensors weights that are complete),
    else a one-line :class:`ModelFolderError`. ``what`` names the setting in messages (e.g. ``model.path``);
    ``weights=False`` checks the config only (a LoRA adapter folder holds the weights elsewhere).
    A Hub id is resolved first (:func:`resolve_model_path`); the folder checked is returned."""
    written = str(path)  # as the user wrote it (Path() drops a leading ./)
    path = resolve_model_path(path, what)
    if not path.exists():
        raise ModelFolderError(f"{what}: {written} does not exist")
    if not path.is_dir():
        raise ModelFolderError(f"{what}: {written} is a file; expected a model folder (config.json, *.safetensors, tokenizer files)")
    config = path / "config.json"
    if not config.exists():
        if (path / "adapter_config.json").exists():
            return path
        raise ModelFolderError(f"{what}: {path} has no config.json (not a transformers model folder)")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{what}: {config} is not valid JSON ({e})") from None
    if not weights:
        return path
    shards = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise ModelFolderError(f"{what}: {index} is not a valid safetensors index ({e})") from None
        missing = [n for n in names if not (path / n).exists()]
        if missing:
            raise ModelFolderError(f"{what}: {path} lacks weight file(s) {', '.join(missing)} listed in {index.name}")
    if not shards:
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        if pickled:
            raise ModelFolderError(f"{what}: {path} has only pickled weights ({', '.join(pickled)}); alignkit loads safetensors only "
                                   "(convert: model.save_pretrained(folder, safe_serialization=True))")
        raise ModelFolderError(f"{what}: {path} has no weights (*.safetensors)")
    for shard in shards:
        _check_safetensors(shard)
    return path


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(path, "tokenizer", code=trust_remote_code)
    if not path.is_dir() or not any((path / f).exists() for f in ("tokenizer_config.json", "tokenizer.json", "config.json")):
        check_model_folder(path, "tokenizer", weights=False)  # names what is missing
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFolderError(f"{path}: cannot load the tokenizer ({' '.join(str(e).split())[:300]})") from None
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
    path = check_model_folder(resolve_model_path(path, code=config.trust_remote_code))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, KeyError) as e:
        raise ModelFolderError(f"{path}: cannot load the model ({' '.join(str(e).split())[:300]})") from None
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
    path = check_model_folder(path, weights=False)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = check_model_folder(resolve_model_path(base, f"{path}: the adapter's base model", code=trust_remote_code), f"{path}: the adapter's base model")
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=True)
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    else:
        model = load_causal_lm(path, ModelConfig(dtype=dtype, trust_remote_code=trust_remote_code))
    model.eval()
    return model
