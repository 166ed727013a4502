"""Hugging Face MarianMT checkpoints <-> lowbit checkpoints.

Our parameter names are Marian's, so both directions are a copy of tensors under the same names
plus a translation of ``config.json``. Neither direction needs the ``transformers`` package.

Marian is a post-norm Transformer with one embedding shared by encoder and decoder; models
using pre-norm or the BMT LayerNorms have no MarianMT equivalent and are refused by
:func:`export_hf`. An export holds the weights the model computes with: a packed model's golden
integer weights, dequantized (:mod:`lowbit.sw.quant.dequant`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lowbit import LowbitError
from lowbit.io import atomic_dir, check_output_dir, write_bytes_atomic, write_text_atomic

from .checkpoint import save_checkpoint
from .model import ACTIVATIONS, Transformer, TransformerConfig
from .tokenizer import EOS, PAD, UNK, Tokenizer

_HF_ACTIVATIONS = {"relu": "relu", "swish": "swish", "silu": "swish", "gelu": "gelu"}


def config_from_hf(hf: dict) -> TransformerConfig:
    """Translate a MarianMT ``config.json`` dict into a :class:`TransformerConfig`."""
    if hf.get("model_type") != "marian":
        raise LowbitError(f"not a MarianMT config: model_type is {hf.get('model_type')!r}, expected 'marian'")

    def same(a, b):
        if hf.get(a, hf.get(b)) != hf.get(b, hf.get(a)):
            raise LowbitError(f"MarianMT config: {a}={hf.get(a)} differs from {b}={hf.get(b)}; lowbit "
                              f"models use one value for encoder and decoder")
        return hf.get(a, hf.get(b))

    if not hf.get("share_encoder_decoder_embeddings", True):
        raise LowbitError("MarianMT config: separate source/target embeddings "
                          "(share_encoder_decoder_embeddings=false) are not supported")
    vocab = hf["vocab_size"]
    if hf.get("decoder_vocab_size") not in (None, vocab):
        raise LowbitError(f"MarianMT config: decoder_vocab_size {hf['decoder_vocab_size']} differs from "
                          f"vocab_size {vocab}")
    if hf.get("normalize_before", False):
        raise LowbitError("MarianMT config: normalize_before=true is not a Marian architecture")
    activation = hf.get("activation_function", "swish")
    if activation not in ACTIVATIONS:
        raise LowbitError(f"MarianMT config: activation_function {activation!r} is not supported "
                          f"({', '.join(sorted(ACTIVATIONS))})")
    return TransformerConfig(
        vocab_size=vocab, d_model=hf["d_model"], encoder_layers=hf["encoder_layers"],
        decoder_layers=hf["decoder_layers"],
        attention_heads=same("encoder_attention_heads", "decoder_attention_heads"),
        ffn_dim=same("encoder_ffn_dim", "decoder_ffn_dim"), activation=activation,
        dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.0),
        activation_dropout=hf.get("activation_dropout", 0.0), normalize_before=False,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        scale_embedding=hf.get("scale_embedding", False),
        max_position_embeddings=hf.get("max_position_embeddings", 1024),
        pad_token_id=hf["pad_token_id"], eos_token_id=hf["eos_token_id"],
        unk_token_id=hf.get("unk_token_id", 1) if hf.get("unk_token_id") is not None else 1,
        decoder_start_token_id=hf.get("decoder_start_token_id", hf["pad_token_id"]))


def config_to_hf(cfg: TransformerConfig) -> dict:
    """A MarianMT ``config.json`` dict for ``cfg``; raises for architectures Marian cannot express."""
    if cfg.normalize_before:
        raise LowbitError("cannot export to MarianMT: the model is pre-norm (normalize_before), MarianMT "
                          "is post-norm")
    if cfg.bmt_norms:
        raise LowbitError("cannot export to MarianMT: the model has BMT LayerNorms (bmt_norms), which "
                          "MarianMT lacks")
    return {
        "architectures": ["MarianMTModel"], "model_type": "marian", "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size, "decoder_vocab_size": cfg.vocab_size,
        "share_encoder_decoder_embeddings": True, "tie_word_embeddings": cfg.tie_word_embeddings,
        "d_model": cfg.d_model, "encoder_layers": cfg.encoder_layers, "decoder_layers": cfg.decoder_layers,
        "encoder_attention_heads": cfg.attention_heads, "decoder_attention_heads": cfg.attention_heads,
        "encoder_ffn_dim": cfg.ffn_dim, "decoder_ffn_dim": cfg.ffn_dim,
        "activation_function": _HF_ACTIVATIONS[cfg.activation], "dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout, "activation_dropout": cfg.activation_dropout,
        "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "init_std": 0.02,
        "scale_embedding": cfg.scale_embedding, "max_position_embeddings": cfg.max_position_embeddings,
        "pad_token_id": cfg.pad_token_id, "eos_token_id": cfg.eos_token_id,
        "forced_eos_token_id": None, "decoder_start_token_id": cfg.decoder_start_token_id,
        "unk_token_id": cfg.unk_token_id, "use_cache": True, "dtype": "float32",
    }


def _read_hf_state(directory: Path) -> dict:
    st, pt = directory / "model.safetensors", directory / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            return load_file(str(st))
        if pt.is_file():
            return torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as e:  # any reader failure is a malformed input file
        raise LowbitError(f"cannot read the weights in {directory}: {e}") from None
    raise LowbitError(f"{directory}: no model.safetensors or pytorch_model.bin")


def import_hf(directory: Path, out: Path) -> Path:
    """Convert a MarianMT directory into a lowbit checkpoint directory ``out``.

    Copies the weights under their (identical) names, keeps the sinusoidal positions implied by
    the config (checked against stored ones when present), and copies the tokenizer files
    (``source.spm``, ``target.spm``, ``vocab.json``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise LowbitError(f"{directory} is not a directory")
    try:
        hf = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LowbitError(f"{directory}: config.json is missing") from None
    except (OSError, ValueError) as e:
        raise LowbitError(f"cannot read {directory / 'config.json'}: {e}") from None
    for name in ("source.spm", "vocab.json"):
        if not (directory / name).is_file():
            raise LowbitError(f"{directory}: {name} is missing (MarianMT tokenizer files: source.spm, "
                              f"target.spm, vocab.json)")
    tokenizer = Tokenizer.from_dir(directory)
    if hf.get("unk_token_id") is None:
        hf = dict(hf, unk_token_id=tokenizer.unk_id)
    cfg = config_from_hf(hf)
    model = Transformer(cfg)
    state = _read_hf_state(directory)
    ours = model.state_dict()
    if "model.shared.weight" not in state and "model.encoder.embed_tokens.weight" in state:
        state["model.shared.weight"] = state["model.encoder.embed_tokens.weight"]
    if "final_logits_bias" not in state:
        state["final_logits_bias"] = torch.zeros(1, cfg.vocab_size)
    for key in ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"):
        if key in state and not torch.allclose(state[key].float(), model.positions[:state[key].shape[0]],
                                               atol=1e-5):
            raise LowbitError(f"{directory}: {key} is not Marian's sinusoidal table")
    with torch.no_grad():
        for name, tensor in ours.items():
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            if name not in state:
                raise LowbitError(f"{directory}: weight {name} is missing")
            if tuple(state[name].shape) != tuple(tensor.shape):
                raise LowbitError(f"{directory}: {name} has shape {tuple(state[name].shape)}, the config "
                                  f"implies {tuple(tensor.shape)}")
            tensor.copy_(state[name].float())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, tokenizer, out, meta={"imported_from": str(directory)})
    return out


def storage_dtype(state: dict) -> torch.dtype:
    """The narrowest of float16, bfloat16 and float32 that holds every tensor of ``state`` exactly
    (float32 when neither 16-bit type does)."""
    for dtype in (torch.float16, torch.bfloat16):
        if all(torch.equal(t.to(dtype).to(t.dtype), t) for t in state.values()):
            return dtype
    return torch.float32


def is_hf_export(directory: Path) -> bool:
    """Whether ``directory`` holds a MarianMT export (what ``export_hf(..., force=True)`` replaces)."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "marian"


def generation_config(cfg: TransformerConfig) -> dict:
    """``generation_config.json`` of an export: lowbit's beam search (5 beams, length penalty
    1.0, a sentence ends when it has 5 finished hypotheses) and no forced end token, since lowbit
    ends a sentence that reaches its length limit without one."""
    return {"decoder_start_token_id": cfg.decoder_start_token_id, "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id, "forced_eos_token_id": None, "num_beams": 5,
            "early_stopping": True, "length_penalty": 1.0, "max_length": cfg.max_position_embeddings}


def export_hf(model: Transformer, tokenizer: Tokenizer, out: Path, force: bool = False) -> Path:
    """Write ``model`` as a MarianMT directory for ``MarianMTModel.from_pretrained`` and
    ``MarianTokenizer.from_pretrained``.

    The weights are those ``model`` computes with (:func:`lowbit.sw.quant.dequant.float_state`):
    a packed model's are its golden integer weights, dequantized; its activation quantization
    has no MarianMT equivalent and is not represented. They are stored once (transformers ties
    both embeddings and ``lm_head`` to ``model.shared``), in the narrowest dtype that holds them
    exactly (:func:`storage_dtype`); ``config.json`` asks for float32 computation, as lowbit's.

    Raises
    ------
    LowbitError
        For architectures MarianMT lacks (pre-norm, BMT norms) and output directories
        :func:`lowbit.io.check_output_dir` refuses (a non-empty one, unless ``force`` and it holds
        an export); both before anything is written.
    """
    from safetensors.torch import save

    from .quant.dequant import float_state

    hf = config_to_hf(model.config)
    out = check_output_dir(out, force=force, replaceable=is_hf_export, kind="MarianMT export")
    state = float_state(model)
    dtype = storage_dtype(state)
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}
    cfg = model.config
    files = {"config.json": hf,
             "generation_config.json": generation_config(cfg),
             "vocab.json": tokenizer.vocab,
             "tokenizer_config.json": {"tokenizer_class": "MarianTokenizer", "source_lang": "en",
                                       "target_lang": "de", "eos_token": EOS, "unk_token": UNK,
                                       "pad_token": PAD, "model_max_length": cfg.max_position_embeddings}}
    with atomic_dir(out) as tmp:
        write_bytes_atomic(tmp / "model.safetensors", save(state, metadata={"format": "pt"}))
        for name, data in files.items():
            write_text_atomic(tmp / name, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        for side, name in (("source", "source.spm"), ("target", "target.spm")):
            write_bytes_atomic(tmp / name, Path(tokenizer.files[side]).read_bytes())
    return out
