"""Training a translation model on Multi30k-style data.

:func:`train` runs the whole loop in phases: set-up (``_setup``: joint SentencePiece training or
the tokenizer of an ``init`` model, the model, the encoded pairs), the optimizer and a resumed
state (``_restore``: Adam with inverse-square-root warmup), one epoch of length-bucketed token
batches (``_train_epoch``: label-smoothed cross-entropy, bfloat16 autocast on CUDA), the end of
an epoch (``_end_epoch``: validation, the log, a resumable training state) and the end
(``_finish``: averaging of the last epochs' weights, the checkpoint). Two hooks serve
quantization-aware training:

* ``transform_model(model) -> model`` runs once before training (after ``init`` weights are
  loaded, before a resumed state is restored): swap modules for quantized ones here;
* ``after_step(model, step)`` runs after every optimizer step (error feedback, re-quantization).

Optional word-level knowledge distillation (``TrainOptions.distill``, Kim & Rush 2016): a frozen
teacher model with the same vocabulary scores every training batch, and the loss becomes
``(1 - a) * label-smoothed CE + a * CE(teacher's distribution, student)`` per target token.

And ``finalize(model, tokenizer, directory, meta)`` replaces the default writer of the finished
checkpoint (default: :func:`lowbit.sw.checkpoint.save_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lowbit import LowbitError
from lowbit.io import atomic_file

from .checkpoint import load_model, save_checkpoint
from .data import read_parallel
from .decode import DecodeOptions, corpus_bleu, pad_batch, translate
from .distributed import context
from .model import Transformer, TransformerConfig
from .tokenizer import Tokenizer, train_sentencepiece

# Named model shapes for --config; any TransformerConfig field can be set by a JSON file instead.
PRESETS = {
    # a few seconds on a CPU: for tests and smoke runs
    "tiny": dict(d_model=64, encoder_layers=1, decoder_layers=1, attention_heads=2, ffn_dim=128,
                 dropout=0.1, max_position_embeddings=256),
    # 7.6M parameters with an 8k vocabulary: Multi30k-sized
    "small": dict(d_model=256, encoder_layers=3, decoder_layers=3, attention_heads=4, ffn_dim=1024,
                  dropout=0.3),
    # 9.9M parameters: a deeper encoder
    "deep-enc": dict(d_model=256, encoder_layers=6, decoder_layers=3, attention_heads=4, ffn_dim=1024,
                     dropout=0.3),
    "wide": dict(d_model=320, encoder_layers=3, decoder_layers=3, attention_heads=4, ffn_dim=1280,
                 dropout=0.3),
}


@dataclass
class TrainOptions:
    epochs: int = 77             # the shipped model's recipe (see docs/nmt.md)
    max_tokens: int = 4096       # per batch, counting padding, the larger of source and target
    lr: float = 1e-3             # peak learning rate, reached after `warmup` steps
    warmup: int = 2000           # linear warmup steps, then lr ~ 1/sqrt(step)
    label_smoothing: float = 0.1
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    seed: int = 1
    avg_last: int = 8            # average the weights of the last N epochs (1: keep the last)
    vocab_size: int = 8000
    spm_type: str = "unigram"
    eval_every: int = 5          # greedy val BLEU every N epochs (and at the end)
    max_train_tokens: int = 128  # drop training pairs longer than this (either side)
    limit: int | None = None     # use only the first N training pairs (smoke tests)
    val_limit: int | None = None  # use only the first N validation pairs (smoke tests)
    save_dtype: str = "float32"  # dtype of the final model.safetensors: float32 | float16
    max_minutes: float | None = None  # safety stop: finish early (averaging, saving) after this
    distill: str | None = None   # teacher model spec for word-level knowledge distillation
    distill_weight: float = 0.5  # a: loss = (1 - a) * CE(labels) + a * CE(teacher probs)
    dropout: float | None = None  # replaces the model config's dropout (e.g. when retraining)

    def __post_init__(self):
        for name in ("epochs", "max_tokens", "warmup", "avg_last", "vocab_size", "eval_every",
                     "max_train_tokens"):
            if getattr(self, name) < 1:
                raise LowbitError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            raise LowbitError(f"save dtype must be float32, float16 or bfloat16, not {self.save_dtype!r}")
        if not 0 <= self.label_smoothing < 1:
            raise LowbitError(f"--label-smoothing must be in [0, 1), not {self.label_smoothing}")
        if not 0 < self.distill_weight <= 1:
            raise LowbitError(f"--distill-weight must be in (0, 1], not {self.distill_weight}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise LowbitError(f"--dropout must be in [0, 1), not {self.dropout}")


def resolve_config(spec: str | None, vocab_size: int) -> TransformerConfig:
    """A preset name, a JSON file or an inline JSON object -> config (vocab_size filled in)."""
    spec = spec or "small"
    if spec in PRESETS:
        fields = dict(PRESETS[spec])
    elif spec.lstrip().startswith("{"):
        try:
            fields = json.loads(spec)
        except ValueError as e:
            raise LowbitError(f"--config is not valid JSON: {e}") from None
    elif Path(spec).is_file():
        try:
            fields = json.loads(Path(spec).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LowbitError(f"cannot read config {spec}: {e}") from None
    else:
        raise LowbitError(f"--config {spec!r} is neither a preset ({', '.join(PRESETS)}), a JSON file "
                          f"nor a JSON object")
    if not isinstance(fields, dict):
        raise LowbitError("--config must describe a JSON object")
    fields.setdefault("vocab_size", vocab_size)
    return TransformerConfig.from_dict(fields)


def make_batches(lengths: list[int], max_tokens: int, rng: random.Random) -> list[list[int]]:
    """Group example indices into batches of similar length with at most ``max_tokens`` padded
    tokens each, in random order. ``lengths[i]`` is the longer side of example i."""
    order = list(range(len(lengths)))
    rng.shuffle(order)                      # ties in length end up in random order
    order.sort(key=lambda i: lengths[i])    # stable sort
    batches, current, longest = [], [], 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if current and new_longest * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def make_tensors(examples, batch: list[int], pad: int, start: int):
    """(src, tgt_in, labels) long tensors of a batch; tgt_in = [start] + target, labels = target + [eos]."""
    src = pad_batch([examples[i][0] for i in batch], pad)
    tgt = pad_batch([examples[i][1] for i in batch], pad)   # target ids end with EOS
    tgt_in = torch.cat([torch.full((len(batch), 1), start, dtype=torch.long), tgt[:, :-1]], dim=1)
    tgt_in = tgt_in.masked_fill(tgt_in == pad, pad)
    return src, tgt_in, tgt


def inverse_sqrt(step: int, warmup: int) -> float:
    """Learning-rate factor: step/warmup during warmup, then sqrt(warmup/step)."""
    step = max(step, 1)
    return min(step / warmup, math.sqrt(warmup / step))


def _torch_save_atomic(obj, path: Path) -> None:
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def average_states(paths: list[Path]) -> dict:
    """Element-wise mean of the floating-point tensors of several saved state dicts."""
    total = None
    for p in paths:
        state = torch.load(p, map_location="cpu", weights_only=True)
        if total is None:
            total = {k: v.double() if v.is_floating_point() else v.clone() for k, v in state.items()}
        else:
            for k, v in state.items():
                if v.is_floating_point():
                    total[k] += v.double()
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()}


@torch.no_grad()
def evaluate_loss(model, examples, pad: int, start: int, max_tokens: int, device, amp: bool) -> float:
    """Mean per-token cross-entropy (no smoothing) of ``examples`` under teacher forcing."""
    model.eval()
    batches = make_batches([max(len(s), len(t)) for s, t in examples], max_tokens, random.Random(0))
    total, count = 0.0, 0
    for batch in batches:
        src, tgt_in, labels = (t.to(device) for t in make_tensors(examples, batch, pad, start))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(src, tgt_in)
        total += F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=pad,
                                 reduction="sum").item()
        count += int((labels != pad).sum())
    model.train()
    return total / max(count, 1)


@dataclass
class _Run:
    """What the phases of one training run share."""
    opts: TrainOptions
    dist: object                # sw/distributed.py context
    dev: torch.device
    amp: bool
    log: object
    out_dir: Path
    model: Transformer
    tokenizer: Tokenizer
    cfg: TransformerConfig
    teacher: Transformer | None
    train_ex: list
    val_ex: list
    src_val: list
    tgt_val: list
    optimizer: object = None
    scheduler: object = None
    net: object = None          # the module that runs the forward pass (DDP-wrapped or model)
    step: int = 0

    @property
    def pad(self) -> int:
        return self.cfg.pad_token_id

    @property
    def start(self) -> int:
        return self.cfg.decoder_start_token_id

    @property
    def snapshots_dir(self) -> Path:
        return self.out_dir / "snapshots"

    @property
    def state_path(self) -> Path:
        return self.out_dir / "train_state.pt"


def train(data_dir: Path, out_dir: Path, config: str | TransformerConfig | None = None,
          opts: TrainOptions | None = None, *, init: str | None = None, resume: bool = False,
          device: str | None = None, transform_model=None, after_step=None, finalize=None,
          log=print) -> dict:
    """Train a model on ``data_dir``'s train split and write a checkpoint directory ``out_dir``.

    Parameters
    ----------
    data_dir : directory with train.{en,de}(.gz) and val.{en,de}(.gz).
    out_dir : receives ``spm.model``, ``train_state.pt`` (resumable state, after every epoch),
        ``snapshots/`` (last epochs' weights), ``train_log.jsonl`` and, at the end, the
        checkpoint (``config.json``, ``model.safetensors``, ``meta.json``).
    config : preset name, JSON file or inline JSON (see :data:`PRESETS`), or a config object.
        Ignored with ``init`` (the init model's config and tokenizer are used).
    init : model spec whose weights start training (fine-tuning, QAT).
    resume : continue from ``out_dir/train_state.pt``; the options must match the saved ones.
    transform_model, after_step, finalize : hooks, see the module docstring.

    Returns
    -------
    dict with the final metrics (``val_bleu_greedy``, ``val_loss``, epochs, steps, seconds).
    """
    opts = opts or TrainOptions()
    if init is None and not resume and not isinstance(config, TransformerConfig):
        resolve_config(config, opts.vocab_size)  # fail on a bad --config before any work
    run, saved = _setup(Path(out_dir), data_dir, config, opts, init, resume, device,
                        transform_model, log)
    first_epoch = _restore(run, saved)
    t0 = time.time()
    stopped_early, last_epoch = False, first_epoch - 1
    for epoch in range(first_epoch, opts.epochs + 1):
        total_loss, total_tokens = _train_epoch(run, epoch, after_step)
        last_epoch = epoch
        stop = (opts.max_minutes is not None and time.time() - t0 > 60 * opts.max_minutes
                and epoch < opts.epochs)
        if run.dist.active:
            stop = run.dist.agree(stop, run.dev)
            if not run.dist.is_main:        # rank 0 evaluates and writes; the others wait
                run.dist.barrier()
                if stop:
                    stopped_early = True
                    break
                continue
        _end_epoch(run, epoch, total_loss, total_tokens, t0)
        if stop:
            run.log(f"stopping after epoch {epoch}: --max-minutes {opts.max_minutes} reached")
            stopped_early = True
            break
    if not run.dist.is_main:
        run.dist.close()
        return {}
    summary = _finish(run, init, finalize, last_epoch, stopped_early, t0)
    run.dist.close()
    return summary


def _setup(out_dir: Path, data_dir, config, opts: TrainOptions, init, resume: bool, device,
           transform_model, log) -> tuple[_Run, dict | None]:
    """Devices, the saved state to resume from, data, tokenizer, model and encoded pairs."""
    dist = context(device)                      # torchrun: one rank per GPU (sw/distributed.py)
    if not dist.is_main:
        log = lambda message: None  # noqa: E731  (rank 0 speaks and writes for all)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = dist.device(device)
    amp = dev.type == "cuda"
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(opts.seed)
    state_path = out_dir / "train_state.pt"
    if resume and not state_path.is_file():
        raise LowbitError(f"cannot resume: {state_path} does not exist")
    saved = torch.load(state_path, map_location="cpu", weights_only=False) if resume else None
    if saved is not None:
        old = saved["options"]
        for key in ("max_tokens", "lr", "warmup", "seed", "vocab_size"):
            if old[key] != getattr(opts, key):
                raise LowbitError(f"cannot resume: --{key.replace('_', '-')} was {old[key]} in the saved "
                                  f"run, now {getattr(opts, key)}")

    src_train, tgt_train = read_parallel(data_dir, "train", limit=opts.limit)
    src_val, tgt_val = read_parallel(data_dir, "val", limit=opts.val_limit)
    model, tokenizer, cfg = _model_and_tokenizer(out_dir, config, opts, init, resume, saved,
                                                 src_train, tgt_train, dist, log)
    if opts.dropout is not None:  # the layers read it from the config at every forward
        cfg.dropout = opts.dropout
    teacher = _load_teacher(opts.distill, cfg, tokenizer, dev) if opts.distill else None
    if teacher is not None:
        log(f"distillation: teacher {opts.distill}, weight {opts.distill_weight}")
    if transform_model is not None:
        model = transform_model(model)
    model.to(dev)
    model.train()

    train_ex = _encode_pairs(tokenizer, src_train, tgt_train,
                             min(opts.max_train_tokens, cfg.max_position_embeddings))
    val_ex = _encode_pairs(tokenizer, src_val, tgt_val, cfg.max_position_embeddings)
    log(f"model: {model.num_parameters() / 1e6:.2f}M parameters, {json.dumps(cfg.to_dict())}")
    log(f"data: {len(train_ex)} training pairs ({len(src_train) - len(train_ex)} dropped as too long), "
        f"{len(val_ex)} validation pairs; device {dev}{' (bf16 autocast)' if amp else ''}")
    run = _Run(opts=opts, dist=dist, dev=dev, amp=amp, log=log, out_dir=out_dir, model=model,
               tokenizer=tokenizer, cfg=cfg, teacher=teacher, train_ex=train_ex, val_ex=val_ex,
               src_val=src_val, tgt_val=tgt_val)
    return run, saved


def _model_and_tokenizer(out_dir: Path, config, opts: TrainOptions, init, resume: bool,
                         saved: dict | None, src_train: list, tgt_train: list, dist, log):
    """The ``init`` model and its tokenizer, or a new tokenizer (trained on the training
    sentences unless resumed) and a new model of the config (the saved run's when resuming)."""
    if init is not None:
        model, tokenizer, _ = load_model(init)
        if dist.is_main:
            tokenizer.save(out_dir)
        dist.barrier()
        return model, Tokenizer.from_dir(out_dir), model.config
    spm_path = out_dir / "spm.model"
    if not (resume and spm_path.is_file()) and dist.is_main:
        log(f"training SentencePiece ({opts.spm_type}, {opts.vocab_size} pieces) on "
            f"{len(src_train)} + {len(tgt_train)} sentences")
        train_sentencepiece(src_train + tgt_train, spm_path, opts.vocab_size, opts.spm_type)
    dist.barrier()
    tokenizer = Tokenizer(spm_path)
    if saved is not None:
        cfg = TransformerConfig.from_dict(saved["config"])
    elif isinstance(config, TransformerConfig):
        cfg = config
    else:
        cfg = resolve_config(config, len(tokenizer))
    if cfg.vocab_size < len(tokenizer):
        raise LowbitError(f"config vocab_size {cfg.vocab_size} is smaller than the tokenizer's "
                          f"{len(tokenizer)}")
    for name, tid in (("pad", tokenizer.pad_id), ("eos", tokenizer.eos_id), ("unk", tokenizer.unk_id)):
        if getattr(cfg, f"{name}_token_id") != tid:
            raise LowbitError(f"config {name}_token_id {getattr(cfg, f'{name}_token_id')} differs from "
                              f"the tokenizer's {tid}")
    return Transformer(cfg), tokenizer, cfg


def _encode_pairs(tokenizer: Tokenizer, srcs, tgts, max_len) -> list:
    out = []
    for s, t in zip(srcs, tgts):
        si, ti = tokenizer.encode(s, "source"), tokenizer.encode(t, "target")
        if max_len is None or (len(si) <= max_len and len(ti) <= max_len):
            out.append((si, ti))
    return out


def _restore(run: _Run, saved: dict | None) -> int:
    """The optimizer and schedule, the saved state restored when resuming, the data-parallel
    wrapper; returns the first epoch to train."""
    opts, model = run.opts, run.model
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "shared" not in name else no_decay).append(p)
    run.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=opts.lr, betas=(0.9, 0.98), eps=1e-8)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(
        run.optimizer, lambda s: inverse_sqrt(s + 1, opts.warmup))
    first_epoch = 1
    if run.dist.is_main:
        run.snapshots_dir.mkdir(exist_ok=True)
    if saved is not None:
        model.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
        run.scheduler.load_state_dict(saved["scheduler"])
        run.step, first_epoch = saved["step"], saved["epoch"] + 1
        torch.set_rng_state(saved["rng_cpu"])
        if run.dev.type == "cuda" and saved.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(saved["rng_cuda"])
        run.log(f"resumed after epoch {saved['epoch']} (step {run.step})")
    run.net = run.dist.wrap(model)      # runs the forward pass; hooks and saving use `model`
    if run.dist.active:
        torch.manual_seed(opts.seed * 1000 + run.dist.rank)     # dropout differs between ranks
        run.log(f"data parallel: {run.dist.world} ranks ({run.dist.backend}), each step takes "
                f"{run.dist.world} batches")
    return first_epoch


def _train_epoch(run: _Run, epoch: int, after_step) -> tuple[float, int]:
    """One pass over the training pairs; the loss and target tokens summed over every rank."""
    from tqdm import tqdm

    opts, dist, dev, pad = run.opts, run.dist, run.dev, run.pad
    lengths = [max(len(s), len(t)) for s, t in run.train_ex]
    rng = random.Random(opts.seed * 100003 + epoch)  # the epoch's batches do not depend on resuming
    batches = dist.shard(make_batches(lengths, opts.max_tokens, rng))
    total_loss, total_tokens = 0.0, 0
    bar = tqdm(batches, desc=f"epoch {epoch}/{opts.epochs}", unit="batch",
               disable=None if dist.is_main else True, file=sys.stderr, leave=False)
    for batch in bar:
        tensors = make_tensors(run.train_ex, batch, pad, run.start)
        ntok = int((tensors[2] != pad).sum())  # counted on the CPU: no GPU sync per step
        src, tgt_in, labels = (t.to(dev, non_blocking=True) for t in tensors)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=run.amp):
            logits = run.net(src, tgt_in)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=pad,
                               label_smoothing=opts.label_smoothing, reduction="sum")
        if run.teacher is not None:
            loss = ((1 - opts.distill_weight) * loss
                    + opts.distill_weight * _distill_loss(run.teacher, src, tgt_in, labels, logits,
                                                          pad, run.amp))
        run.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks: scaled by world / all ranks' tokens, the
        # average is the gradient of the summed loss over every token of the step
        (loss * dist.world / dist.global_tokens(ntok, dev)).backward()
        if opts.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), opts.clip_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.step += 1
        if after_step is not None:
            after_step(run.model, run.step)
        total_loss += loss.detach()
        total_tokens += ntok
    return dist.sum(float(total_loss), dev), int(dist.sum(total_tokens, dev))


def _end_epoch(run: _Run, epoch: int, total_loss: float, total_tokens: int, t0: float) -> None:
    """Rank 0 after an epoch: validation, the log line, a snapshot for averaging and the
    resumable state."""
    opts, model, dev = run.opts, run.model, run.dev
    record = {"epoch": epoch, "step": run.step, "lr": run.scheduler.get_last_lr()[0],
              "train_loss": float(total_loss) / max(total_tokens, 1),
              "val_loss": evaluate_loss(model, run.val_ex, run.pad, run.start, opts.max_tokens,
                                        dev, run.amp),
              "seconds": round(time.time() - t0, 1)}
    if epoch % opts.eval_every == 0:
        record["val_bleu_greedy"] = _val_bleu(model, run.tokenizer, run.src_val, run.tgt_val, dev)
    run.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in record.items()))
    with open(run.out_dir / "train_log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
               run.snapshots_dir / f"epoch{epoch:04d}.pt")
    for old in sorted(run.snapshots_dir.glob("epoch*.pt"))[:-opts.avg_last]:
        old.unlink()
    _torch_save_atomic({"model": model.state_dict(), "optimizer": run.optimizer.state_dict(),
                        "scheduler": run.scheduler.state_dict(), "step": run.step,
                        "epoch": epoch, "config": run.cfg.to_dict(),
                        "options": dataclasses.asdict(opts), "rng_cpu": torch.get_rng_state(),
                        "rng_cuda": torch.cuda.get_rng_state() if dev.type == "cuda" else None},
                       run.state_path)
    run.dist.barrier()


def _finish(run: _Run, init, finalize, last_epoch: int, stopped_early: bool, t0: float) -> dict:
    """Average the last snapshots (kept only if not worse on validation) and write the
    checkpoint; returns the summary."""
    opts, model, dev = run.opts, run.model, run.dev
    snaps = sorted(run.snapshots_dir.glob("epoch*.pt"))[-opts.avg_last:]
    last_bleu = _val_bleu(model, run.tokenizer, run.src_val, run.tgt_val, dev)
    chosen, val_bleu = "last", last_bleu
    if len(snaps) > 1:
        last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(average_states(snaps))
        avg_bleu = _val_bleu(model, run.tokenizer, run.src_val, run.tgt_val, dev)
        run.log(f"val greedy BLEU: last epoch {last_bleu:.2f}, average of {len(snaps)} epochs "
                f"{avg_bleu:.2f}")
        if avg_bleu >= last_bleu:
            chosen, val_bleu = f"average of epochs {snaps[0].stem[5:]}..{snaps[-1].stem[5:]}", avg_bleu
        else:
            model.load_state_dict(last_state)
    val_loss = evaluate_loss(model, run.val_ex, run.pad, run.start, opts.max_tokens, dev, run.amp)
    summary = {"epochs": last_epoch, "steps": run.step, "seconds": round(time.time() - t0, 1),
               "weights": chosen, "val_bleu_greedy": round(val_bleu, 2), "val_loss": round(val_loss, 4),
               "stopped_early": stopped_early}
    meta = {"trained_with": {"options": dataclasses.asdict(opts), "init": init, "device": str(dev),
                             "ranks": run.dist.world},
            "train_summary": summary}
    model.eval()
    if finalize is not None:
        finalize(model, run.tokenizer, run.out_dir, meta)
    else:
        save_checkpoint(model.cpu(), run.tokenizer, run.out_dir, meta,
                        dtype=getattr(torch, opts.save_dtype))
    run.log(f"done: {json.dumps(summary)}; checkpoint in {run.out_dir}")
    return summary


def _load_teacher(spec: str, cfg: TransformerConfig, tokenizer: Tokenizer, dev):
    """The frozen teacher of ``--distill``: a float model whose ids mean the same pieces."""
    teacher, teacher_tok, _ = load_model(spec)
    if teacher_tok.vocab != tokenizer.vocab or teacher.config.vocab_size != cfg.vocab_size:
        raise LowbitError(f"--distill {spec}: the teacher's vocabulary differs from the student's "
                          f"(distillation compares their distributions id by id)")
    teacher.to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _distill_loss(teacher, src, tgt_in, labels, logits, pad: int, amp: bool):
    """Sum over target tokens of the cross-entropy between the teacher's next-word distribution
    and the student's (word-level distillation; padding positions are left out)."""
    with torch.no_grad(), torch.autocast(device_type=src.device.type, dtype=torch.bfloat16, enabled=amp):
        t_logits = teacher(src, tgt_in)
    t_prob = F.softmax(t_logits.float(), dim=-1)
    per_token = -(t_prob * F.log_softmax(logits.float(), dim=-1)).sum(-1)   # [B, T]
    return per_token.masked_fill(labels == pad, 0.0).sum()


def _val_bleu(model, tokenizer, src_val, tgt_val, dev) -> float:
    hyps = translate(model, tokenizer, src_val, DecodeOptions(beam=1, batch_size=256), device=dev)
    return corpus_bleu(hyps, tgt_val)[0].score
