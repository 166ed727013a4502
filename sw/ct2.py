"""CTranslate2 export of lowbit models, and decoding with the export as lowbit decodes.

:func:`export_ct2` builds CTranslate2's own ``TransformerSpec`` from the tensors a model computes
with (:func:`lowbit.sw.quant.dequant.float_state`) and writes it with CTranslate2's converter
machinery (``Converter.convert``: validation, optional weight quantization, ``model.bin``). It
does not go through the MarianMT converter (``ct2-transformers-converter``), which assumes
Marian's vocabulary layout: it drops the last vocabulary row (Marian's ``<pad>``; ours is id 0
and the last row is a real piece) and starts decoding from a zero vector. Here the vocabulary is
kept as it is and decoding starts from the model's own start token
(``config.decoder_start_token``).

How each part of the model maps onto the spec:

==============================  =================================================================
lowbit                          CTranslate2 spec
==============================  =================================================================
``model.shared`` (tied)         encoder and decoder ``embeddings``, decoder ``projection`` (one
                                copy on disk: the converter aliases equal tensors)
``final_logits_bias``           ``projection.bias``
``sqrt(d_model)`` scale         ``scale_embeddings`` (1.0 without ``scale_embedding``)
sinusoidal positions            ``position_encodings.encodings``: our table, row for row
post-norm / pre-norm            ``pre_norm``; pre-norm's final norms are the stacks' ``layer_norm``
q/k/v_proj                      fused ``linear[0]`` (self-attention); ``linear[0]`` = q and fused
                                ``linear[1]`` = k, v (encoder-decoder attention)
out_proj, fc1, fc2              ``linear[-1]``, ``ffn.linear_0``, ``ffn.linear_1``
LayerNorm (eps 1e-5)            ``layer_norm`` gamma/beta, ``layer_norm_epsilon`` 1e-5
==============================  =================================================================

Sources enter without their end token (``add_source_eos``: CTranslate2 appends ``</s>``), so the
input of the exported model is the plain SentencePiece pieces. :class:`Ct2Translator` decodes
with lowbit's length limit (``a * source length + b`` per sentence, end token included) by
decoding sentences of equal source length together; CTranslate2's beam search ranks 2K
candidates and finishes the end-of-sentence ones among the best K, as lowbit's does. (The two
differ in one detail: a hypothesis cut at the length limit is normalised by its length there, by
its length + 1 in lowbit; no translation of test_2016_flickr changes by it.)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from lowbit import LowbitError
from lowbit.io import atomic_dir, check_output_dir

from .tokenizer import Tokenizer


def _ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise LowbitError("CTranslate2 is not installed: pip install ctranslate2 "
                          "(or the lowbit[test] extra)") from None
    return ctranslate2


def quantization_types() -> tuple[str, ...]:
    """The weight types ``export_ct2(..., quantization=...)`` accepts (CTranslate2's list)."""
    _ctranslate2()
    from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES

    return tuple(ACCEPTED_MODEL_TYPES)


def check_quantization(quantization: str | None) -> None:
    """Raise :class:`LowbitError` unless CTranslate2 is installed and ``quantization`` is None or
    one of its weight types."""
    types = quantization_types()
    if quantization is not None and quantization not in types:
        raise LowbitError(f"--quantization must be one of {', '.join(types)}, not {quantization!r}")


def is_ct2_export(directory: Path) -> bool:
    """Whether ``directory`` holds a CTranslate2 model (what ``export_ct2(..., force=True)`` replaces)."""
    return (Path(directory) / "model.bin").is_file() and (Path(directory) / "config.json").is_file()


def _vocabulary(model, tokenizer: Tokenizer) -> list[str]:
    """Token string of every id 0..vocab_size-1 (ids the tokenizer lacks get unique fillers,
    which no input produces)."""
    tokens = [tokenizer.pieces.get(i, f"<lowbit-unused-{i}>") for i in range(model.config.vocab_size)]
    if len(set(tokens)) != len(tokens):
        raise LowbitError("cannot export to CTranslate2: the vocabulary has repeated pieces")
    return tokens


def build_spec(model, tokenizer: Tokenizer):
    """CTranslate2 ``TransformerSpec`` of ``model`` (weights as float32 numpy arrays).

    Raises
    ------
    LowbitError
        For BMT models (CTranslate2 has no LayerNorm after the Q/K/V projections).
    """
    _ctranslate2()
    import torch
    from ctranslate2.converters.utils import fuse_linear
    from ctranslate2.specs import common_spec, transformer_spec

    from .model import sinusoidal_positions
    from .quant.dequant import float_state

    cfg = model.config
    if cfg.bmt_norms:
        raise LowbitError("cannot export to CTranslate2: the model has BMT LayerNorms (bmt_norms), "
                          "which CTranslate2's Transformer lacks")
    activations = {"relu": common_spec.Activation.RELU, "swish": common_spec.Activation.SWISH,
                   "silu": common_spec.Activation.SWISH, "gelu": common_spec.Activation.GELU}
    # copies: CTranslate2's quantization rewrites the arrays in place (they would be the model's)
    state = {k: v.to(torch.float32, copy=True).numpy() for k, v in float_state(model).items()}
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.encoder_layers, cfg.decoder_layers), cfg.attention_heads, pre_norm=cfg.normalize_before,
        activation=activations[cfg.activation])

    def linear(target, name):
        target.weight = state[f"{name}.weight"]
        if f"{name}.bias" in state:
            target.bias = state[f"{name}.bias"]
        return target

    def fused(target, names):
        fuse_linear(target, [linear(common_spec.LinearSpec(), n) for n in names])

    def norm(target, name):
        target.gamma, target.beta = state[f"{name}.weight"], state[f"{name}.bias"]

    positions = sinusoidal_positions(cfg.max_position_embeddings, cfg.d_model).numpy()
    embedding = state["model.shared.weight"]
    for stack, side in ((spec.encoder, "encoder"), (spec.decoder, "decoder")):
        stack.scale_embeddings = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        stack.position_encodings.encodings = positions
        (stack.embeddings[0] if side == "encoder" else stack.embeddings).weight = embedding
        if cfg.normalize_before:
            norm(stack.layer_norm, f"model.{side}.layer_norm")
        for i, layer in enumerate(stack.layer):
            prefix = f"model.{side}.layers.{i}"
            attn = f"{prefix}.self_attn"
            fused(layer.self_attention.linear[0], [f"{attn}.{p}_proj" for p in "qkv"])
            linear(layer.self_attention.linear[-1], f"{attn}.out_proj")
            norm(layer.self_attention.layer_norm, f"{attn}_layer_norm")
            if side == "decoder":
                cross = f"{prefix}.encoder_attn"
                linear(layer.attention.linear[0], f"{cross}.q_proj")
                fused(layer.attention.linear[1], [f"{cross}.k_proj", f"{cross}.v_proj"])
                linear(layer.attention.linear[-1], f"{cross}.out_proj")
                norm(layer.attention.layer_norm, f"{cross}_layer_norm")
            linear(layer.ffn.linear_0, f"{prefix}.fc1")
            linear(layer.ffn.linear_1, f"{prefix}.fc2")
            norm(layer.ffn.layer_norm, f"{prefix}.final_layer_norm")
    spec.decoder.projection.weight = embedding if cfg.tie_word_embeddings else state["lm_head.weight"]
    spec.decoder.projection.bias = state["final_logits_bias"].reshape(-1)
    tokens = _vocabulary(model, tokenizer)
    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    config = spec.config
    config.unk_token, config.eos_token = tokens[cfg.unk_token_id], tokens[cfg.eos_token_id]
    config.bos_token = config.decoder_start_token = tokens[cfg.decoder_start_token_id]
    config.add_source_eos = True
    config.layer_norm_epsilon = 1e-5  # torch.nn.LayerNorm's
    config.add_attribute("max_position_embeddings", cfg.max_position_embeddings)
    return spec


def export_ct2(model, tokenizer: Tokenizer, out, quantization: str | None = None,
               force: bool = False) -> Path:
    """Write ``model`` as a CTranslate2 model directory ``out`` (plus lowbit's tokenizer files).

    ``quantization`` is CTranslate2's weight type (``int8``, ``int16``, ``float16`` ...; None
    keeps float32). A packed model is exported with its dequantized golden weights (see
    :mod:`lowbit.sw.quant.dequant`). The output directory is checked before the conversion and
    written atomically; a non-empty one is replaced only with ``force`` and only if it holds a
    CTranslate2 model.
    """
    _ctranslate2()
    from ctranslate2.converters import Converter

    check_quantization(quantization)
    out = check_output_dir(out, force=force, replaceable=is_ct2_export, kind="CTranslate2 model")
    spec = build_spec(model, tokenizer)

    class _Converter(Converter):
        def _load(self):
            return spec

    with atomic_dir(out) as tmp:
        # force: the converter replaces the (empty) temporary folder atomic_dir made
        _Converter().convert(str(tmp), quantization=quantization, force=True)
        tokenizer.save(tmp)
    return out


class Ct2Translator:
    """Translate with a CTranslate2 model written by :func:`export_ct2`, as
    :func:`lowbit.sw.decode.translate` does (same inputs, truncation and length limit).

    Parameters
    ----------
    directory : the exported model (``model.bin``, ``config.json``, the tokenizer files).
    threads : CPU threads of one translation (CTranslate2's ``intra_threads``).
    device : ``cpu`` or ``cuda``.
    """

    def __init__(self, directory, threads: int = 1, device: str = "cpu"):
        ctranslate2 = _ctranslate2()
        directory = Path(directory)
        if not is_ct2_export(directory):
            raise LowbitError(f"{directory} is not a CTranslate2 model (model.bin, config.json)")
        try:
            config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LowbitError(f"cannot read {directory / 'config.json'}: {e}") from None
        self.max_positions = int(config.get("max_position_embeddings", 1024))
        self.tokenizer = Tokenizer.from_dir(directory)
        try:
            self.translator = ctranslate2.Translator(str(directory), device=device, inter_threads=1,
                                                     intra_threads=threads)
        except (RuntimeError, ValueError) as e:
            raise LowbitError(f"cannot load the CTranslate2 model {directory}: {e}") from None

    def translate(self, sentences: list[str], opts=None, progress: bool = False, warn=None,
                  exact_limits: bool = True) -> list[str]:
        """Translations of ``sentences`` (aligned with them; empty lines give empty lines).

        CTranslate2 takes one length limit per call. With ``exact_limits`` sentences of equal
        source length (hence equal limits) are decoded together, which gives lowbit's
        translations. Without it all sentences go in one call (CTranslate2 batches them by
        length, ``opts.batch_size`` at a time) under the longest limit, and each output is cut to
        its own limit: the same for greedy search, faster, but a beam search may then finish a
        sentence that reaches its limit differently.
        """
        from .decode import DecodeOptions, encode_sources, max_lengths, pad_batch

        opts = opts or DecodeOptions()
        tok = self.tokenizer
        encoded = encode_sources(tok, sentences, min(opts.max_input_tokens, self.max_positions), warn)
        order = sorted(encoded, key=lambda i: len(encoded[i]))
        if exact_limits:
            groups = [[i for i in order if len(encoded[i]) == n]
                      for n in sorted({len(ids) for ids in encoded.values()})]
        else:
            groups = [order] if order else []
        out = [""] * len(sentences)
        if progress:
            from tqdm import tqdm
            groups = tqdm(groups, desc="translating", unit="group", file=sys.stderr)
        for group in groups:
            src = pad_batch([encoded[i] for i in group], tok.pad_id)
            limits = max_lengths(src, tok.pad_id, opts, self.max_positions)
            pieces = [[tok.pieces[t] for t in encoded[i][:-1]] for i in group]  # the model adds </s>
            results = self.translator.translate_batch(
                pieces, beam_size=opts.beam, length_penalty=opts.length_penalty, num_hypotheses=1,
                max_decoding_length=max(limits), min_decoding_length=0, max_batch_size=opts.batch_size)
            for i, n, result in zip(group, limits, results):
                ids = [tok.vocab.get(p, tok.unk_id) for p in result.hypotheses[0][:n]]
                out[i] = tok.decode(ids, "target")
        return out
