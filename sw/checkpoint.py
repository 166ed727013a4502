"""Model checkpoints: one directory, one loader.

A checkpoint directory holds

* ``config.json``        -- :class:`~lowbit.sw.model.TransformerConfig` fields,
* ``model.safetensors``  -- the state dict under Marian names (a tied ``lm_head.weight`` is not
  stored twice); float16/bfloat16 tensors are loaded as float32,
* the tokenizer          -- ``spm.model`` (joint vocabulary) or Marian's ``source.spm`` +
  ``target.spm`` + ``vocab.json``,
* ``meta.json``          -- optional free-form metadata (how it was trained, scores).

:func:`load_model` is the single dispatch point from a model *spec* (a shipped name listed by
``lowbit models`` or a path) to ``(model, tokenizer, meta)``; other model formats are recognised
there.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from lowbit import LowbitError

from lowbit.io import atomic_file, write_text_atomic
from .model import Transformer, TransformerConfig, check_fits
from .tokenizer import Tokenizer

DEFAULT_MODEL = "multi30k-en-de"


def _models_dir() -> Path:
    # Installed package: lowbit/models next to lowbit/__init__.py; editable: the repo's folder.
    import lowbit

    return Path(lowbit.__file__).resolve().parent / "models"


def shipped_models() -> dict[str, Path]:
    """Name -> directory of every model shipped in ``lowbit/models``."""
    root = _models_dir()
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir())
            if (p / "config.json").is_file() or (p / "manifest.json").is_file()}


def resolve_model_dir(spec: str | os.PathLike | None) -> Path:
    """A model spec (shipped name, path, or None for the default) -> its directory."""
    spec = DEFAULT_MODEL if spec is None else spec
    shipped = shipped_models()
    if str(spec) in shipped:
        return shipped[str(spec)]
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise LowbitError(f"model {spec}: a model is a checkpoint directory, not a file")
    names = ", ".join(shipped) or "none"
    raise LowbitError(f"model {spec!r} is neither a shipped model ({names}) nor a directory")


def state_dict_for_saving(model: Transformer, dtype: torch.dtype = torch.float32) -> dict:
    """The model's persistent tensors, contiguous, in ``dtype`` (a tied lm_head is left out)."""
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}


def save_checkpoint(model: Transformer, tokenizer: Tokenizer, directory: str | os.PathLike,
                    meta: dict | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` + ``tokenizer`` (+ ``meta``) as a checkpoint directory; files are replaced
    atomically. ``dtype`` float16 halves the size (the loader converts back to float32)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_file(directory / "model.safetensors") as tmp:
        save_file(state_dict_for_saving(model, dtype), str(tmp), metadata={"format": "pt"})
    write_text_atomic(directory / "config.json", model.config.to_json())
    tokenizer.save(directory)
    if meta is not None:
        write_text_atomic(directory / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def _check_file(path: Path) -> None:
    if not path.is_file():
        state = "is not a file" if path.exists() else "is missing"
        raise LowbitError(f"{path.parent} is not a model checkpoint: {path.name} {state}")


def read_config(directory: Path) -> TransformerConfig:
    """``config.json`` of a checkpoint; every problem raises :class:`LowbitError` naming it."""
    path = Path(directory) / "config.json"
    _check_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LowbitError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise LowbitError(f"{path} must hold a JSON object")
    try:
        return TransformerConfig.from_dict(data)
    except LowbitError as e:
        raise LowbitError(f"{path}: {e}") from None


def _tensor_count(path: Path) -> int:
    """Number of tensors in a safetensors file, from its header alone (nothing is loaded)."""
    from safetensors import SafetensorError, safe_open

    _check_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return len(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise LowbitError(f"cannot read {path}: {e}") from None


def load_state(model: Transformer, path: Path) -> None:
    """Load ``model.safetensors`` into ``model``, checking names, shapes and finite values."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _check_file(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise LowbitError(f"cannot read {path}: {e}") from None
    expected = model.state_dict()
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise LowbitError(f"{path} does not match its config.json: {'; '.join(parts)}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise LowbitError(f"{path}: {name} has shape {tuple(tensor.shape)}, config.json implies "
                              f"{tuple(expected[name].shape)}")
        # One float64 sum is finite exactly when every element is (no float overflows it),
        # and it takes a third of the time of an elementwise isfinite.
        if (tensor.is_complex() or tensor.dtype == torch.bool
                or not math.isfinite(tensor.sum(dtype=torch.float64))):
            raise LowbitError(f"{path}: {name} must hold finite real numbers ({tensor.dtype})")
    with torch.no_grad():
        for name, tensor in state.items():
            expected[name].copy_(tensor.to(expected[name].dtype))


def load_model(spec: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """Load a model from a spec: a shipped name, a checkpoint directory, or None (the default).

    Returns
    -------
    (model, tokenizer, meta): the :class:`Transformer` in eval mode on ``device`` (float32), its
    :class:`Tokenizer`, and the ``meta.json`` dict (empty when absent, plus ``"path"``).

    Raises
    ------
    LowbitError
        When the spec names nothing, or the directory lacks or has malformed files.
    """
    directory = resolve_model_dir(spec)
    if (directory / "manifest.json").exists():  # a packed (integer) model: lowbit.sw.quant
        from .quant.packed import load_packed

        return load_packed(directory, device)
    if not (directory / "config.json").exists():
        raise LowbitError(f"{directory} is not a model checkpoint: config.json is missing, and "
                          f"no manifest.json of a packed model is there either")
    cfg = read_config(directory)
    config = directory / "config.json"
    weights = directory / "model.safetensors"
    tensors = _tensor_count(weights)
    try:
        check_fits(cfg, weights.stat().st_size, tensors, weights.name)
    except LowbitError as e:
        raise LowbitError(f"{config}: {e}") from None
    tokenizer = Tokenizer.from_dir(directory)
    if len(tokenizer) > cfg.vocab_size:
        raise LowbitError(f"{directory}: the tokenizer has {len(tokenizer)} ids but the model's "
                          f"vocab_size in config.json is {cfg.vocab_size}")
    model = Transformer(cfg)
    qat = cfg.extra.get("qat")
    if qat:  # trained with --qat: rebuild its quantized (fake-quant) modules
        from .quant.qat import prepare_model

        if not isinstance(qat, dict) or not isinstance(qat.get("scheme"), str):
            raise LowbitError(f"{config}: extra.qat must be an object naming a scheme, not {qat!r}")
        try:
            model = prepare_model(model, qat["scheme"])
        except LowbitError as e:
            raise LowbitError(f"{config}: {e}") from None
    load_state(model, weights)
    meta = {}
    if (directory / "meta.json").exists():
        try:
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LowbitError(f"cannot read {directory / 'meta.json'}: {e}") from None
        if not isinstance(meta, dict):
            raise LowbitError(f"{directory / 'meta.json'} must hold a JSON object")
    meta["path"] = str(directory)
    model.eval()
    return model.to(device), tokenizer, meta
