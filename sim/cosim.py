"""Whole-model co-simulation: translate with every quantized matmul executed by the Verilated RTL.

``lowbit cosim --model PACKED --data-dir D --split S`` decodes a test split with a packed model
(:func:`lowbit.sw.quant.packed.load_packed`) while every integer matmul of the model runs twice:

* on the Verilated matmul unit that the package's scheme needs (INT unit for INT8/INT6 and for
  Q.K^T / attention.V, log-shift unit for logB weights, XNOR-popcount unit for BMT and the
  binary-coding mixed scheme), through the compiled harness (:mod:`lowbit.sim.harness`), and
* on the golden kernel (:mod:`lowbit.sw.golden`) with the same integer operands.

The two accumulators are compared with equality at every call (:class:`RtlKernels`, plugged in
with :func:`lowbit.sw.quant.kernels.use_kernels`); the first difference stops the run with the
matmul's site (layer, role, operand shapes) and the first differing element. The decode goes on
with the RTL's results, and at the end its tokens are compared with a pure golden decode of the
same batch. Batches of sentences are decoded together (each matmul call then covers the whole
batch: large transfers into the harness), and ``--jobs`` worker processes take batches from a
shared queue.

Packing (docs/hardware.md, "Transaction protocol"): the units see exactly the beats of
:class:`lowbit.hw.driver.Protocol` for each matmul, tile rows ``m0`` outer, tile columns ``n0``
inner, ascending K inside a tile. A batched operand (``[..., M, K]`` for Q.K^T and
attention.V, whose "weights" are activations too) is a sequence of independent matmuls streamed
back to back in one harness call. Because the activation part and the weight part of a beat
occupy disjoint bits of the payload, the beats are built as ``A_part[tile row, k] |
W_part[tile column, k]``: each part is packed once per tile row / column and the full stream is
one broadcast OR, not a per-beat packing of every field (``tests/test_cosim.py`` checks the words
against the driver's payloads).
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lowbit import LowbitError
from lowbit.sw import golden

__all__ = ["RtlKernels", "CosimMismatch", "UnitStats", "BatchedPacker", "cosim_split",
           "CosimReport", "GoldenRecord", "describe_site"]

CHUNK_BEATS = 1 << 20          # x beats per harness call (bounds host memory: ~20 MB at 8x8)
UNIT_OF_KERNEL = {"int_matmul": "int8", "log_matmul": "log", "xnor_matmul": "xnor"}


# ---------------------------------------------------------------------------------------------
# Mismatch report


class CosimMismatch(Exception):
    """The RTL and the golden kernel disagree: raised at the first differing matmul.

    ``info`` holds ``site`` (module path), ``layer``, ``role``, ``shapes`` (operand shapes),
    ``kernel``, ``index`` (of the first differing element in the result ``[..., M, N]``),
    ``rtl``, ``golden`` and ``differing`` (count of differing elements). ``str()`` is the
    one-paragraph report the CLI prints.
    """

    def __init__(self, info: dict):
        self.info = info
        super().__init__(self.message())

    def message(self) -> str:
        i = self.info
        idx = ", ".join(str(v) for v in i["index"])
        return (f"MISMATCH in matmul #{i['call']} {i['kernel']} at {i['site']} "
                f"(layer {i['layer']}, role {i['role']}, shapes {i['shapes']} -> "
                f"{i['result_shape']}): first differing element [{idx}]: rtl {i['rtl']} vs "
                f"golden {i['golden']} ({i['differing']} of {i['elements']} elements differ)")


def describe_site(name: str) -> tuple[str, str]:
    """``(layer, role)`` of a matmul site name: ``model.decoder.layers.2.encoder_attn.qk`` ->
    ``("decoder.2", "encoder_attn.qk")``; ``lm_head`` -> ``("output", "lm_head")``."""
    m = re.fullmatch(r"(?:model\.)?(encoder|decoder)\.layers\.(\d+)\.(.+)", name)
    if m:
        return f"{m.group(1)}.{m.group(2)}", m.group(3)
    if name == "lm_head":
        return "output", "lm_head"
    head, _, tail = name.rpartition(".")
    return head or "-", tail


# ---------------------------------------------------------------------------------------------
# Packing of batched matmuls into beats


@dataclass
class UnitStats:
    """What one unit did: kernel calls, harness calls, MACs, simulated and ideal cycles."""
    unit: str
    params: dict
    calls: int = 0
    harness_calls: int = 0
    macs: int = 0               # multiply-accumulates (XNOR: binary ones, K * planes)
    cycles: int = 0
    ideal_cycles: float = 0.0
    beats: int = 0
    sim_seconds: float = 0.0    # inside the harness (C++)
    pack_seconds: float = 0.0   # building the beats / reading the outputs
    golden_seconds: float = 0.0

    def add(self, other: "UnitStats") -> None:
        for f in ("calls", "harness_calls", "macs", "cycles", "ideal_cycles", "beats",
                  "sim_seconds", "pack_seconds", "golden_seconds"):
            setattr(self, f, getattr(self, f) + getattr(other, f))

    @property
    def utilisation(self) -> float:
        return self.ideal_cycles / self.cycles if self.cycles else 0.0

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("unit", "params", "calls", "harness_calls", "macs",
                                            "cycles", "ideal_cycles", "beats", "sim_seconds",
                                            "pack_seconds", "golden_seconds")}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UnitStats":
        return cls(**d)


@dataclass
class Run:
    """Harness work of one kernel call."""
    cycles: int = 0
    beats: int = 0
    calls: int = 0
    sim_seconds: float = 0.0


class BatchedPacker:
    """Beats of batched matmuls for one Verilated unit (``rtl``: a
    :class:`lowbit.sim.harness.VerilatedUnit`), in the driver's order for each matmul.

    INT/log: ``run(a [B, M, K], w [Bw, N, K], bias [N])`` with ``Bw`` = ``B`` or 1 (shared
    weights). XNOR: ``run_xnor(a_words [Pa, M, W], w_words [Pw, N, W], alpha [Pw, N], k, bias)``.
    Both return ``(acc [B, M, N] int64, Run)`` and run in raw mode (``t = acc + bias``: the
    model dequantizes on the host).
    """

    def __init__(self, rtl, chunk_beats: int = CHUNK_BEATS):
        from lowbit.sim.harness import BeatPacker

        self.rtl, self.hw = rtl, rtl.hw
        self.rows, self.cols = self.hw.rows, self.hw.cols
        self.kind = rtl.kind
        self.chunk_beats = chunk_beats
        self._BeatPacker = BeatPacker
        self.xw = (self.hw.x_layout.size + 31) // 32
        self.fault = None   # test hook, see RtlKernels.plant_fault
        self._w_parts: dict = {}

    # -- cfg: one beat per tile, depends only on the tile column ------------------------------
    def _cfg_row(self, bias: np.ndarray, tn: int) -> np.ndarray:
        cols = self.cols
        b = np.zeros(tn * cols, np.int64)
        b[:len(bias)] = bias
        pk = self._BeatPacker(self.hw.cfg_layout, tn)
        pk.put("bias", b.reshape(tn, cols))
        pk.put("raw", np.ones(tn, np.int64))
        return pk.words                                               # [tn, cfg words]

    def _drive(self, parts, cfg_row):
        """Stream the beats ``parts`` yields (``(u0, u1, x words)`` for tile rows ``u0..u1-1``,
        all tile columns of each) and return the y payload words of every tile in order and
        a :class:`Run`."""
        ys, run = [], Run()
        for u0, u1, x in parts:
            cfg = np.tile(cfg_row, (u1 - u0, 1))
            if self.fault is not None:
                x = self.fault("x", x)
            t0 = time.perf_counter()
            y, c = self.rtl.run_beats(cfg, x, len(cfg) * self.rows)
            run.sim_seconds += time.perf_counter() - t0
            if self.fault is not None:
                y = self.fault("y", y)
            ys.append(y)
            run.cycles += c
            run.calls += 1
            run.beats += len(x)
        return np.concatenate(ys), run

    def _values(self, yw: np.ndarray, units: int, tn: int) -> np.ndarray:
        """y words of ``units`` tile rows x ``tn`` tiles -> ``[units, rows, tn*cols]``."""
        vals = self.rtl.packer.y_values(yw)                           # [tiles*rows, cols]
        return (vals.reshape(units, tn, self.rows, self.cols).transpose(0, 2, 1, 3)
                .reshape(units, self.rows, tn * self.cols))

    # -- INT / log ------------------------------------------------------------------------------
    def _weights(self, w_key, make):
        """The weight part of the beats, built by ``make()`` once per ``w_key`` (a model's
        weights are constant: packing them again at every decode step is wasted work).
        ``w_key`` is ``(key tuple, tensor)``: the tensor is held with its entry, so its storage
        cannot be freed and reused by another tensor with the same key."""
        if w_key is None:
            return make()
        key, tensor = w_key
        if key not in self._w_parts:
            self._w_parts[key] = (make(), tensor)
        return self._w_parts[key][0]

    def run(self, a: np.ndarray, w, bias: np.ndarray, w_key=None):
        """``w``: the weights ``[Bw, N, K]``, or a callable returning them (called only when
        ``w_key``, a key of the constant weights, has no packed weight part yet)."""
        rows, cols, xw = self.rows, self.cols, self.xw
        b, m, k = a.shape
        tm = -(-m // rows)
        # A part: beat (b, i, k) holds A[b, i*rows + r, k]; W part: (bw, j, k) holds
        # W[bw, j*cols + c, k] and the tile's `last` flag on k = K-1.
        a_p = np.zeros((b, tm * rows, k), np.int64)
        a_p[:, :m] = a
        pa = self._BeatPacker(self.hw.x_layout, b * tm * k)
        pa.put("a", a_p.reshape(b, tm, rows, k).transpose(0, 1, 3, 2).reshape(-1, rows))
        a_part = pa.words.reshape(b * tm, k, xw)

        def weight_part():
            wv = w() if callable(w) else w
            bw, n, _ = wv.shape
            tn = -(-n // cols)
            w_p = np.zeros((bw, tn * cols, k), np.int64)
            w_p[:, :n] = wv
            pw = self._BeatPacker(self.hw.x_layout, bw * tn * k)
            pw.put("w", w_p.reshape(bw, tn, cols, k).transpose(0, 1, 3, 2).reshape(-1, cols))
            last = np.zeros((bw * tn, k), np.int64)
            last[:, -1] = 1
            pw.put("last", last.reshape(-1))
            return pw.words.reshape(bw, tn, k, xw), n
        w_part, n = self._weights(w_key, weight_part)
        bw, tn = w_part.shape[:2]
        units = b * tm                                                # (batch, tile row) pairs
        step = max(1, self.chunk_beats // (tn * k))

        def parts():
            for u0 in range(0, units, step):
                u1 = min(units, u0 + step)
                wsel = w_part[(np.arange(u0, u1) // tm) % bw]          # [u, tn, k, xw]
                x = a_part[u0:u1, None] | wsel
                yield u0, u1, x.reshape(-1, xw)
        yw, run = self._drive(parts(), self._cfg_row(bias, tn))
        acc = self._values(yw, units, tn).reshape(b, tm * rows, tn * cols)[:, :m, :n]
        return acc, run

    # -- XNOR -------------------------------------------------------------------------------
    def run_xnor(self, a_words: np.ndarray, w_words: np.ndarray, alpha: np.ndarray, k: int,
                 bias: np.ndarray):
        from lowbit.sim.harness import _bit_windows

        rows, cols, lanes, xw = self.rows, self.cols, self.hw.lanes, self.xw
        pa, m, _ = a_words.shape
        pw, n, _ = w_words.shape
        tm, tn = -(-m // rows), -(-n // cols)
        chunks = -(-k // lanes)
        starts = np.arange(chunks) * lanes
        pieces = (lanes + 31) // 32
        a_win = np.zeros((pa, tm * rows, chunks, pieces), np.uint32)
        a_win[:, :m] = _bit_windows(a_words, k, starts, lanes)
        w_win = np.zeros((pw, tn * cols, chunks, pieces), np.uint32)
        w_win[:, :n] = _bit_windows(w_words, k, starts, lanes)
        al = np.zeros((pw, tn * cols), np.int64)
        al[:, :n] = alpha
        # Beat order in a tile (the driver's): K-chunk, weight plane i, activation plane j.
        # A part (i_tile, chunk, j): lanes of rows + plane index; W part (j_tile, chunk, i):
        # lanes of columns + alpha + count; the last flag on the tile's final beat.
        pk = self._BeatPacker(self.hw.x_layout, tm * chunks * pa)
        av = a_win.reshape(pa, tm, rows, chunks, pieces).transpose(1, 3, 0, 2, 4)
        pk.put_lanes("a", av.reshape(-1, rows, pieces))
        pk.put("plane", np.broadcast_to(np.arange(pa), (tm, chunks, pa)).reshape(-1))
        a_part = pk.words.reshape(tm, chunks, 1, pa, xw)
        pk = self._BeatPacker(self.hw.x_layout, tn * chunks * pw)
        wv = w_win.reshape(pw, tn, cols, chunks, pieces).transpose(1, 3, 0, 2, 4)
        pk.put_lanes("w", wv.reshape(-1, cols, pieces))
        alv = np.broadcast_to(al.reshape(pw, tn, 1, cols).transpose(1, 2, 0, 3),
                              (tn, chunks, pw, cols))
        pk.put("alpha", alv.reshape(-1, cols))
        cnt = np.minimum(lanes, k - starts)
        pk.put("count", np.broadcast_to(cnt[None, :, None], (tn, chunks, pw)).reshape(-1))
        w_part = pk.words.reshape(tn, chunks, pw, 1, xw)
        pk = self._BeatPacker(self.hw.x_layout, 1)
        pk.put("last", np.ones(1, np.int64))
        last_word = pk.words[0]
        per_tile = chunks * pw * pa
        step = max(1, self.chunk_beats // (tn * per_tile))

        def parts():
            for u0 in range(0, tm, step):
                u1 = min(tm, u0 + step)
                x = a_part[u0:u1, None] | w_part[None]                # [u, tn, ch, pw, pa, xw]
                x[:, :, -1, -1, -1] |= last_word
                yield u0, u1, x.reshape(-1, xw)
        yw, run = self._drive(parts(), self._cfg_row(bias, tn))
        acc = self._values(yw, tm, tn).reshape(tm * rows, tn * cols)[:m, :n]
        return acc[None], run


# ---------------------------------------------------------------------------------------------
# Golden results of a decode, replayed


class GoldenRecord:
    """The golden kernel calls of one decode, in order: operands and results.

    :meth:`kernels` gives recording wrappers of the golden kernels (for
    :func:`lowbit.sw.quant.kernels.use_kernels`). :meth:`lookup` answers the next call of a
    second decode of the same batch: the recorded result if that call had the same kernel and
    equal operands (tensors compared with ``torch.equal``, other arguments with ``==``, after
    binding both to the kernel's signature), else None. The golden kernels are pure functions,
    so a replayed result is exactly what recomputing would give.
    """

    def __init__(self):
        import inspect

        self.calls: list = []
        self.pos = 0
        self.replayed = 0
        self._sig = {name: inspect.signature(getattr(golden, name))
                     for name in UNIT_OF_KERNEL}

    def _bind(self, name, args, kwargs) -> dict:
        bound = self._sig[name].bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    def kernels(self) -> dict:
        def recorder(name):
            fn = getattr(golden, name)

            def run(*args, **kwargs):
                out = fn(*args, **kwargs)
                self.calls.append((name, self._bind(name, args, kwargs), out))
                return out
            return run
        return {name: recorder(name) for name in UNIT_OF_KERNEL}

    def lookup(self, name: str, args, kwargs):
        i = self.pos
        self.pos += 1
        if i >= len(self.calls) or self.calls[i][0] != name:
            return None
        _, rec, out = self.calls[i]
        now = self._bind(name, args, kwargs)
        for key, v in now.items():
            r = rec[key]
            if v is r:
                continue
            if isinstance(v, torch.Tensor) or isinstance(r, torch.Tensor):
                if not (isinstance(v, torch.Tensor) and isinstance(r, torch.Tensor)
                        and v.shape == r.shape and v.dtype == r.dtype and torch.equal(v, r)):
                    return None
            elif v != r:
                return None
        self.replayed += 1
        return out


# ---------------------------------------------------------------------------------------------
# Kernels with the golden signatures, run on the RTL and checked against the golden kernel


def _np64(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.int64, copy=False)


def _tensor_key(t: torch.Tensor) -> tuple:
    """Identifies a tensor's current contents without reading them: storage address, version
    counter (bumped by every in-place change), shape and strides."""
    return (t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.dtype)


def _covers(kind: str, have: dict, need: dict) -> bool:
    """Whether a unit built with ``have`` runs every matmul that needs ``need``."""
    if kind == "int8":
        return have["a_bits"] >= need["a_bits"] and have["w_bits"] >= need["w_bits"]
    if kind == "log":   # codes of another width are another format
        return (have["bits"] == need["bits"] and have.get("zero_code", False) ==
                need.get("zero_code", False) and have["a_bits"] >= need["a_bits"])
    return have["a_planes"] >= need["a_planes"] and have["w_planes"] >= need["w_planes"]


def units_for_model(model) -> list[tuple[str, dict]]:
    """The units a quantized model needs: ``[(kind, params)]``, one INT unit (widest a_bits /
    w_bits of its sites), one log unit per code width, one XNOR unit (most planes).

    Read from the :class:`lowbit.sw.quant.kernels.MatmulSite` of every quantized module.
    """
    from lowbit.sw.quant.kernels import MatmulSite

    need: dict = {}
    for mod in model.modules():
        site = getattr(mod, "site", None)
        if not isinstance(site, MatmulSite):
            continue
        p = site.params
        if site.unit == "int":
            cur = need.setdefault(("int8",), {"a_bits": 2, "w_bits": 2})
            cur["a_bits"] = max(cur["a_bits"], p["a_bits"])
            cur["w_bits"] = max(cur["w_bits"], p["w_bits"])
        elif site.unit == "log":
            cur = need.setdefault(("log", p["bits"]), {"bits": p["bits"], "a_bits": 2})
            cur["a_bits"] = max(cur["a_bits"], p["a_bits"])
        elif site.unit == "xnor":
            cur = need.setdefault(("xnor",), {"a_planes": 1, "w_planes": 1})
            cur["a_planes"] = max(cur["a_planes"], p["a_planes"])
            cur["w_planes"] = max(cur["w_planes"], p["w_planes"])
    return [(key[0], params) for key, params in sorted(need.items(), key=lambda kv: str(kv[0]))]


class RtlKernels:
    """Substitutes for the golden kernels that run the Verilated unit and check every result.

    Parameters
    ----------
    rows, cols : PE array of every unit.
    max_k : the units' largest K (docs/numerics.md); default the contract's 32768, which is
        also the bound the golden kernels put on biases (a smaller unit has a narrower bias).
    lanes : XNOR unit lanes (bits of K per beat).
    units : ``[(kind, params)]`` built up front (:func:`units_for_model`); a call that none of
        them covers gets a unit of its own parameters.
    fault : test only: build every unit as the faulty variant ``fault`` of
        :data:`lowbit.hw.faults.FAULTS` (co-simulation must then report a mismatch).

    Use :meth:`kernels` with :func:`lowbit.sw.quant.kernels.use_kernels`. Each call computes the
    golden result, runs the RTL on the same operands, compares them with equality and returns
    the RTL's result (a torch tensor like the golden one); a difference raises
    :class:`CosimMismatch`.
    """

    def __init__(self, *, rows: int = 8, cols: int = 8, max_k: int = golden.DEFAULT_MAX_K,
                 lanes: int = 32, units=(), fault: str | None = None):
        self.rows, self.cols, self.max_k, self.lanes = rows, cols, max_k, lanes
        self.fault = fault
        self.replay: GoldenRecord | None = None   # set per batch by the worker
        self._units: list = []          # [(kind, params, VerilatedUnit, BatchedPacker, stats)]
        self.calls = 0
        self._fault = None
        for kind, params in units:
            self._make(kind, params)

    # -- units --------------------------------------------------------------------------------
    def _make(self, kind: str, need: dict):
        from lowbit.sim.harness import VerilatedUnit

        params = {"rows": self.rows, "cols": self.cols, "max_k": self.max_k}
        if kind == "xnor":
            params["lanes"] = self.lanes
        params.update(need)
        if self.fault is not None:
            params["fault"] = self.fault
        rtl = VerilatedUnit(kind, **params)
        packer = BatchedPacker(rtl)
        packer.fault = self._fault
        entry = (kind, rtl.hw.params, rtl, packer, UnitStats(kind, dict(params)))
        self._units.append(entry)
        return entry

    def unit(self, kind: str, need: dict):
        """``(VerilatedUnit, BatchedPacker, UnitStats)`` of a unit of ``kind`` covering
        ``need`` (made on first use when none does)."""
        for k, have, rtl, packer, st in self._units:
            if k == kind and _covers(kind, have, need):
                return rtl, packer, st
        return self._make(kind, need)[2:]

    def stats(self) -> list[UnitStats]:
        return [e[4] for e in self._units]

    def close(self) -> None:
        for e in self._units:
            e[2].close()

    def plant_fault(self, call: int, stream: str = "y", bit: int = 0) -> None:
        """Test hook: flip bit ``bit`` of the first payload word of the ``stream`` (``"y"``:
        the first output beat of the RTL; ``"x"``: the first input beat, i.e. a corrupted
        operand) in the harness run of kernel call number ``call`` (1-based). Co-simulation
        must report the resulting difference (when the flipped bit matters)."""
        if stream not in ("x", "y"):
            raise ValueError(f"stream must be 'x' or 'y', not {stream!r}")
        if not isinstance(call, int) or call < 1:
            raise ValueError(f"call must be a positive integer, not {call!r}")

        def fault(which, words):
            if which != stream or self.calls != call:
                return words
            words = words.copy()
            words[0, 0] ^= np.uint32(1 << bit)
            self._set_fault(None)               # once
            return words
        self._set_fault(fault)

    def _set_fault(self, fault) -> None:
        self._fault = fault
        for e in self._units:
            e[3].fault = fault

    def kernels(self) -> dict:
        return {"int_matmul": self.int_matmul, "log_matmul": self.log_matmul,
                "xnor_matmul": self.xnor_matmul}

    # -- the three kernels (the golden signatures) ---------------------------------------------
    def int_matmul(self, a, w, bias=None, *, a_bits=8, w_bits=8, max_k=golden.DEFAULT_MAX_K):
        t0 = time.perf_counter()
        want = self._golden("int_matmul", a, w, bias, a_bits=a_bits, w_bits=w_bits,
                            max_k=max_k)
        unit = self.unit("int8", {"a_bits": a_bits, "w_bits": w_bits})
        p = unit[0].hw.params
        return self._run_int(unit, "int_matmul", a, w, bias, want, time.perf_counter() - t0,
                             golden.int_max_product(p["a_bits"], p["w_bits"]))

    def log_matmul(self, a, codes, bias=None, *, bits, a_bits=8, zero_code=False,
                   max_k=golden.DEFAULT_MAX_K):
        t0 = time.perf_counter()
        want = self._golden("log_matmul", a, codes, bias, bits=bits, a_bits=a_bits,
                            zero_code=zero_code, max_k=max_k)
        unit = self.unit("log", {"bits": bits, "a_bits": a_bits, "zero_code": zero_code})
        p = unit[0].hw.params
        return self._run_int(unit, "log_matmul", a, codes, bias, want, time.perf_counter() - t0,
                             golden.log_max_product(p["a_bits"], p["bits"], p["zero_code"]))

    def xnor_matmul(self, a_words, w_words, alpha, k, bias=None, *,
                    max_k=golden.DEFAULT_MAX_K):
        t0 = time.perf_counter()
        want = self._golden("xnor_matmul", a_words, w_words, alpha, k, bias, max_k=max_k)
        tg = time.perf_counter() - t0
        pa, pw = a_words.shape[0], w_words.shape[0]
        rtl, packer, st = self.unit("xnor", {"a_planes": pa, "w_planes": pw})
        self.calls += 1
        hw = rtl.hw
        self._check_k(k, hw)
        b = self._bias(bias, want.shape[-1], golden.xnor_max_product(hw.a_planes, hw.w_planes),
                       hw)
        t1 = time.perf_counter()
        acc, run = packer.run_xnor(_np64(a_words), _np64(w_words), _np64(alpha), int(k), b)
        m, n = acc.shape[1], acc.shape[2]
        macs = m * n * k * pa * pw
        self._account(st, run, tg, time.perf_counter() - t1, macs,
                      macs / (hw.rows * hw.cols * hw.lanes))
        return self._compare("xnor_matmul", acc[0], want,
                             [tuple(a_words.shape), tuple(w_words.shape), f"K={k}"])

    # -- shared ---------------------------------------------------------------------------------
    def _golden(self, name: str, *args, **kwargs) -> torch.Tensor:
        """The golden kernel's result for these operands: replayed from the golden decode of
        the same batch (:class:`GoldenRecord`) when that call had exactly these operands,
        computed otherwise."""
        if self.replay is not None:
            want = self.replay.lookup(name, args, kwargs)
            if want is not None:
                return want
        return getattr(golden, name)(*args, **kwargs)

    @staticmethod
    def _site_name() -> str:
        from lowbit.sw.quant import kernels

        site = kernels.current_site()
        return site.name if site is not None else "(no site)"

    def _check_k(self, k: int, hw) -> None:
        if k > hw.max_k:
            raise LowbitError(f"{self._site_name()}: K={k} exceeds the unit's max_k {hw.max_k} "
                              f"(raise --max-k)")

    def _bias(self, bias, n: int, pmax: int, hw) -> np.ndarray:
        if bias is None:
            return np.zeros(n, np.int64)
        b = _np64(bias)
        bound = golden.bias_bound(pmax, hw.max_k)
        if b.size and int(np.abs(b).max()) > bound:
            raise LowbitError(f"{self._site_name()}: bias up to {int(np.abs(b).max())} exceeds "
                              f"the unit's bias range {bound} at max_k {hw.max_k} (raise --max-k)")
        return b

    def _run_int(self, unit, kernel, a, w, bias, want, tg, pmax):
        rtl, packer, st = unit
        self.calls += 1
        hw = rtl.hw
        k = a.shape[-1]
        self._check_k(k, hw)
        # Batched operands (Q.K^T, attention.V): one independent matmul per batch element.
        batch = tuple(torch.broadcast_shapes(a.shape[:-2], w.shape[:-2]))
        an = _np64(a.expand(*batch, *a.shape[-2:])).reshape(-1, *a.shape[-2:])
        if w.dim() == 2:    # a layer's weights: shared by the batch, packed once per model
            wn, key = (lambda: _np64(w)[None]), (_tensor_key(w), w)
        else:
            wn, key = _np64(w.expand(*batch, *w.shape[-2:])).reshape(-1, *w.shape[-2:]), None
        b = self._bias(bias, w.shape[-2], pmax, hw)
        t1 = time.perf_counter()
        acc, run = packer.run(an, wn, b, key)
        nb, m, n = acc.shape
        self._account(st, run, tg, time.perf_counter() - t1, nb * m * n * k,
                      nb * m * n * k / (hw.rows * hw.cols))
        return self._compare(kernel, acc.reshape(*batch, m, n), want,
                             [tuple(a.shape), tuple(w.shape)])

    @staticmethod
    def _account(st: UnitStats, run: Run, golden_s, rtl_s, macs, ideal) -> None:
        st.calls += 1
        st.harness_calls += run.calls
        st.cycles += run.cycles
        st.beats += run.beats
        st.macs += macs
        st.ideal_cycles += ideal
        st.golden_seconds += golden_s
        st.sim_seconds += run.sim_seconds
        st.pack_seconds += rtl_s - run.sim_seconds

    def _compare(self, kernel, acc: np.ndarray, want: torch.Tensor, shapes):
        g = _np64(want)
        if acc.shape != g.shape or not np.array_equal(acc, g):
            name = self._site_name()
            layer, role = describe_site(name)
            if acc.shape != g.shape:
                idx, rv, gv, nd = (), f"shape {acc.shape}", f"shape {g.shape}", g.size
            else:
                diff = acc != g
                idx = tuple(int(v) for v in np.argwhere(diff)[0])
                rv, gv, nd = int(acc[idx]), int(g[idx]), int(diff.sum())
            raise CosimMismatch({"call": self.calls, "kernel": kernel, "site": name,
                                 "layer": layer, "role": role,
                                 "shapes": " x ".join(str(list(s)) if isinstance(s, tuple)
                                                      else s for s in shapes),
                                 "result_shape": list(g.shape), "index": list(idx), "rtl": rv,
                                 "golden": gv, "differing": nd, "elements": int(g.size)})
        return torch.from_numpy(acc).to(want.device)


# ---------------------------------------------------------------------------------------------
# Decoding a split through the RTL


@dataclass
class CosimOptions:
    """Settings of a co-simulation run (the CLI flags)."""
    rows: int = 8
    cols: int = 8
    max_k: int = golden.DEFAULT_MAX_K
    lanes: int = 32
    beam: int = 1
    batch_size: int = 64
    jobs: int = 1
    plant_fault: int | None = None      # test hook: RtlKernels.plant_fault(call) in the job
    # that decodes the first batch
    rtl_fault: str | None = None        # test only: faulty RTL variant (lowbit.hw.faults)
    harnesses: dict = field(default_factory=dict)  # built libraries, handed to the workers


@dataclass
class CosimReport:
    """Outcome of :func:`cosim_split`."""
    sentences: int = 0
    identical: int = 0
    differing: list = field(default_factory=list)     # sentence indices whose tokens differ
    mismatch: dict | None = None                      # CosimMismatch.info of the first one
    units: list = field(default_factory=list)         # UnitStats, summed over jobs
    seconds: float = 0.0
    build_seconds: float = 0.0
    translations: dict = field(default_factory=dict)  # sentence index -> token ids (RTL)

    @property
    def cycles(self) -> int:
        return sum(u.cycles for u in self.units)

    @property
    def ideal_cycles(self) -> float:
        return sum(u.ideal_cycles for u in self.units)

    @property
    def utilisation(self) -> float:
        return self.ideal_cycles / self.cycles if self.cycles else 0.0

    @property
    def sim_seconds(self) -> float:
        return sum(u.sim_seconds for u in self.units)

    @property
    def ok(self) -> bool:
        return self.mismatch is None and self.identical == self.sentences


def _encode(tokenizer, sentences, limit: int, warn) -> list:
    """Token ids of each sentence (None for an empty line), truncated as translate() does."""
    out = []
    for i, s in enumerate(sentences):
        if not s.strip():
            out.append(None)
            continue
        ids = tokenizer.encode(s, "source")
        if len(ids) > limit:
            warn(f"line {i + 1}: input of {len(ids)} tokens truncated to {limit}")
            ids = ids[:limit - 1] + [tokenizer.eos_id]
        out.append(ids)
    return out


def make_batches(encoded: list, batch_size: int) -> list[list[int]]:
    """Sentence indices in batches of similar source length (longest first: the slowest
    batches start first, so parallel jobs finish together)."""
    order = sorted((i for i, ids in enumerate(encoded) if ids is not None),
                   key=lambda i: (-len(encoded[i]), i))
    return [order[j:j + batch_size] for j in range(0, len(order), batch_size)]


@torch.no_grad()
def greedy_retiring(model, src: torch.Tensor, opts) -> list[list[int]]:
    """Greedy decoding of a batch with finished sentences leaving it: the same tokens as
    :func:`lowbit.sw.decode.greedy_search`, fewer matmul rows.

    ``greedy_search`` keeps every sentence in the batch until the last one ends; on the
    simulated hardware those rows are real work (a batch of 64 runs as long as its longest
    translation). Here a sentence is dropped from the decoder state (its rows of the encoder
    output, the mask and the key/value cache) at the step it emits EOS, a padding token (where
    ``greedy_search`` cuts its output) or reaches its length limit. Every row of the model is
    computed independently of the others (per-row activation scales, per-tensor scales fixed by
    calibration), so the kept rows' results do not change: ``tests/test_cosim.py`` checks the
    tokens against ``greedy_search``.
    """
    from lowbit.sw.decode import _max_lengths

    cfg = model.config
    b = src.shape[0]
    max_len = _max_lengths(src, cfg.pad_token_id, opts, cfg.max_position_embeddings)
    memory, src_mask = model.encode(src), model.src_mask(src)
    cache = model.new_cache()
    tokens = torch.full((b,), cfg.decoder_start_token_id, dtype=torch.long, device=src.device)
    alive = torch.arange(b, device=src.device)         # batch row -> sentence
    out: list[list[int]] = [[] for _ in range(b)]
    for step in range(int(max_len.max())):
        tokens = model.decode_step(tokens, memory, src_mask, cache, step).argmax(-1)
        ended = (tokens == cfg.eos_token_id) | (tokens == cfg.pad_token_id)
        for i, t, e in zip(alive.tolist(), tokens.tolist(), ended.tolist()):
            if not e:
                out[i].append(t)
        done = ended | (step + 1 >= max_len[alive])
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().view(-1)
            alive, tokens = alive[keep], tokens[keep]
            memory, src_mask = memory.index_select(0, keep), src_mask.index_select(0, keep)
            model.reorder_cache(cache, keep, static_too=True)
    return out


def _decode(model, src: torch.Tensor, opts) -> list[list[int]]:
    """The decode co-simulation runs: greedy with retiring sentences, or beam search."""
    from lowbit.sw.decode import decode_batch

    return greedy_retiring(model, src, opts) if opts.beam == 1 else decode_batch(model, src,
                                                                                  opts)


class _Worker:
    """One process's share: the model, its units, decoding of batches through RTL and golden."""

    def __init__(self, model_dir: str, opts: CosimOptions):
        from lowbit.sw.checkpoint import load_model
        from lowbit.sw.decode import DecodeOptions

        self.model, self.tokenizer, _ = load_model(model_dir)
        self.rtl = RtlKernels(rows=opts.rows, cols=opts.cols, max_k=opts.max_k,
                              lanes=opts.lanes, units=units_for_model(self.model),
                              fault=opts.rtl_fault)
        self.decode_opts = DecodeOptions(beam=opts.beam, batch_size=opts.batch_size)

    def batch(self, encoded: list, plant_fault: int | None = None) -> tuple[list, list]:
        """Decode one batch (token id lists) with the RTL and with the golden kernels.

        Returns ``(rtl ids, golden ids)``; raises :class:`CosimMismatch` at the first matmul
        whose RTL result differs.
        """
        from lowbit.sw.decode import pad_batch
        from lowbit.sw.quant import kernels

        src = pad_batch(encoded, self.tokenizer.pad_id)
        if plant_fault is not None:
            self.rtl.calls = 0
            self.rtl.plant_fault(plant_fault)
        # The golden decode first, recording its kernel results: the RTL decode then compares
        # each RTL result with the recorded golden result of the same call when the operands
        # are equal (checked), instead of running every golden kernel a second time.
        record = GoldenRecord()
        with kernels.use_kernels(**record.kernels()):
            gold_ids = _decode(self.model, src, self.decode_opts)
        self.rtl.replay = record
        try:
            with kernels.use_kernels(**self.rtl.kernels()):
                rtl_ids = _decode(self.model, src, self.decode_opts)
        finally:
            self.rtl.replay = None
        return rtl_ids, gold_ids


def _job_main(model_dir, opts, tasks, results):
    """Worker process: take ``(batch number, [(index, ids)])`` from ``tasks`` until None."""
    from lowbit.sim.verilator import remember_harnesses

    torch.set_num_threads(1)
    remember_harnesses(opts.harnesses)
    try:
        worker = _Worker(model_dir, opts)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which exits
        results.put(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        task = tasks.get()
        if task is None:
            break
        number, items = task
        try:
            fault = opts.plant_fault if number == 0 else None
            rtl_ids, gold_ids = worker.batch([ids for _, ids in items], fault)
        except CosimMismatch as e:
            results.put(("mismatch", e.info))
            break
        except BaseException as e:  # noqa: BLE001
            results.put(("error", f"{type(e).__name__}: {e}"))
            break
        results.put(("batch", [(i, r, g) for (i, _), r, g in zip(items, rtl_ids, gold_ids)]))
    results.put(("stats", [s.to_dict() for s in worker.rtl.stats()]))
    worker.rtl.close()


def _merge_stats(report: CosimReport, stats: list) -> None:
    for d in stats:
        s = UnitStats.from_dict(d) if isinstance(d, dict) else d
        for u in report.units:
            if u.unit == s.unit and u.params == s.params:
                u.add(s)
                break
        else:
            report.units.append(UnitStats(s.unit, dict(s.params)))
            report.units[-1].add(s)


def build_units(model, opts: CosimOptions, log=None) -> float:
    """Build (cached) every unit the model needs before workers start; returns seconds."""
    from lowbit.sim.harness import VerilatedUnit

    t0 = time.perf_counter()
    for kind, need in units_for_model(model):
        params = {"rows": opts.rows, "cols": opts.cols, "max_k": opts.max_k, **need}
        if kind == "xnor":
            params["lanes"] = opts.lanes
        if opts.rtl_fault is not None:
            params["fault"] = opts.rtl_fault
        if log:
            log(f"unit {kind}: " + " ".join(f"{k}={v}" for k, v in params.items()))
        VerilatedUnit(kind, **params).close()
    return time.perf_counter() - t0


def cosim_split(model_dir: str, sentences: list[str], opts: CosimOptions, *, progress=None,
                log=None, warn=None) -> CosimReport:
    """Co-simulate the translation of ``sentences`` (see the module docstring).

    ``progress(n)`` is called as sentences finish; ``log(line)`` gets setup messages. With
    ``opts.jobs > 1`` the batches are shared out to that many worker processes.
    """
    from lowbit.sw.checkpoint import load_model

    model, tokenizer, meta = load_model(model_dir)
    if not units_for_model(model):
        raise LowbitError(f"{model_dir} has no quantized matmuls to co-simulate (a float "
                          f"model: quantize it with `lowbit quantize` first)")
    if warn is None:
        warn = lambda m: print(f"lowbit: warning: {m}", file=sys.stderr)  # noqa: E731
    report = CosimReport(sentences=len(sentences))
    report.build_seconds = build_units(model, opts, log)
    from lowbit.sim.verilator import harness_memo
    opts.harnesses = harness_memo()
    limit = min(256, model.config.max_position_embeddings)
    encoded = _encode(tokenizer, sentences, limit, warn)
    empty = sum(1 for e in encoded if e is None)
    report.identical += empty           # an empty line translates to "" without the model
    if progress and empty:
        progress(empty)
    batches = make_batches(encoded, opts.batch_size)
    t0 = time.perf_counter()
    if opts.jobs <= 1 or len(batches) <= 1:
        del model
        _run_inline(model_dir, opts, encoded, batches, report, progress)
    else:
        del model
        _run_jobs(model_dir, opts, encoded, batches, report, progress)
    report.seconds = time.perf_counter() - t0
    return report


def _take(report: CosimReport, rows, progress) -> None:
    for i, r, g in rows:
        report.translations[i] = r
        if r == g:
            report.identical += 1
        else:
            report.differing.append(i)
    if progress:
        progress(len(rows))


def _run_inline(model_dir, opts, encoded, batches, report, progress) -> None:
    worker = _Worker(model_dir, opts)
    try:
        for number, batch in enumerate(batches):
            fault = opts.plant_fault if number == 0 else None
            try:
                rtl_ids, gold_ids = worker.batch([encoded[i] for i in batch], fault)
            except CosimMismatch as e:
                report.mismatch = e.info
                break
            _take(report, list(zip(batch, rtl_ids, gold_ids)), progress)
    finally:
        _merge_stats(report, worker.rtl.stats())
        worker.rtl.close()


def _run_jobs(model_dir, opts, encoded, batches, report, progress) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")       # fresh interpreters: no forked torch thread pools
    tasks, results = ctx.Queue(), ctx.Queue()
    jobs = min(opts.jobs, len(batches))
    for number, batch in enumerate(batches):
        tasks.put((number, [(i, encoded[i]) for i in batch]))
    for _ in range(jobs):
        tasks.put(None)
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # one core per job
    procs = [ctx.Process(target=_job_main, args=(model_dir, opts, tasks, results), daemon=True)
             for _ in range(jobs)]
    try:
        for p in procs:
            p.start()
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    finished, error = 0, None
    try:
        while finished < jobs:
            try:
                kind, payload = results.get(timeout=5)
            except Exception:  # noqa: BLE001 - queue.Empty: check the workers are alive
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    error = f"a co-simulation job died (exit code {dead[0].exitcode})"
                    break
                continue
            if kind == "batch":
                _take(report, payload, progress)
            elif kind == "stats":
                _merge_stats(report, payload)
                finished += 1
            elif kind == "mismatch":
                if report.mismatch is None:
                    report.mismatch = payload
                break           # stop at the first mismatch: the others are terminated
            else:
                error = payload
                break
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    if error is not None:
        raise LowbitError(f"co-simulation job failed: {error}")
