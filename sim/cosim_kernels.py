"""The co-simulation's kernels: golden-kernel substitutes that run the Verilated RTL and check.

:class:`RtlKernels` has one substitute per registered unit kind whose golden kernel the model
calls (``int_matmul``, ``log_matmul``, ``xnor_matmul``; plugged in with
:func:`lowbit.sw.quant.kernels.use_kernels`). Each takes the golden kernel's arguments, runs the
matmul on a Verilated unit of that kind (:class:`lowbit.sim.harness.VerilatedUnit`, beats from
the one packer of :mod:`lowbit.hw.packing`, raw mode: ``t = acc + bias``, the model
dequantizes on the host) and compares its result with the golden kernel's by equality; the
first difference raises :class:`CosimMismatch` with the matmul's site (layer, role, operand
shapes) and the first differing element. A batched operand (``[..., M, K]`` for Q.K^T and
attention.V, whose "weights" are activations too) is a sequence of independent matmuls
streamed back to back in one harness call; the packed weight part of a layer's constant weights
is kept and reused (the packer's weight cache). :class:`GoldenRecord` replays the golden
results of a first, pure golden decode of the same batch.

The decoding of whole splits and the worker processes are :mod:`lowbit.sim.cosim`.
"""

from __future__ import annotations

import inspect
import re
import time
from dataclasses import dataclass

import numpy as np
import torch

from lowbit import LowbitError
from lowbit.contract import DEFAULT_MAX_K
from lowbit.hw.units import kind_of_kernel, resolve, unit_class, unit_kinds

__all__ = ["RtlKernels", "CosimMismatch", "UnitStats", "GoldenRecord", "describe_site",
           "units_for_model", "golden_kernels"]


def golden_kernels() -> dict:
    """``{kernel name: golden kernel}`` of every registered unit kind whose golden kernel a
    quantized model calls through :mod:`lowbit.sw.quant.kernels`."""
    from lowbit.sw.quant.kernels import matmul_kernels

    return {name: resolve(target) for name, target in matmul_kernels().items()}


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
        return (f"MISMATCH in {i.get('what', 'matmul')} #{i['call']} {i['kernel']} at {i['site']} "
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
# Statistics


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
        self.calls: list = []
        self.pos = 0
        self.replayed = 0
        self._golden = golden_kernels()
        self._sig = {name: inspect.signature(fn) for name, fn in self._golden.items()}

    def _bind(self, name, args, kwargs) -> dict:
        bound = self._sig[name].bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    def kernels(self) -> dict:
        def recorder(name):
            fn = self._golden[name]

            def run(*args, **kwargs):
                out = fn(*args, **kwargs)
                self.calls.append((name, self._bind(name, args, kwargs), out))
                return out
            return run
        return {name: recorder(name) for name in self._golden}

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


def _tensor_key(t) -> tuple:
    """Identifies a tensor's current contents without reading them: storage address, version
    counter (bumped by every in-place change), shape and strides (an int is its own key)."""
    if not isinstance(t, torch.Tensor):
        return (t,)
    return (t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.dtype)


class _Lazy:
    """A tensor's int64 numpy copy, made only when called (``shape`` is known at once)."""

    def __init__(self, t: torch.Tensor):
        self.t, self.shape = t, (1, *t.shape)

    def __call__(self) -> np.ndarray:
        return _np64(self.t)[None]


def units_for_model(model) -> list[tuple[str, dict]]:
    """The units a quantized model needs: ``[(kind, params)]``, as few as cover every site (INT:
    the widest a_bits / w_bits; log: one unit per code width; XNOR: the most planes).

    Read from the :class:`lowbit.sw.quant.kernels.MatmulSite` of every quantized module; the
    unit descriptions say which parameters a site needs and how two needs merge.
    """
    from lowbit.sw.quant.kernels import MatmulSite

    needs: list = []
    for mod in model.modules():
        site = getattr(mod, "site", None)
        if not isinstance(site, MatmulSite):
            continue
        cls = kind_of_kernel(site.kernel)
        if cls is None:
            continue
        need = cls.need_of_site(site.params)
        for i, (kind, have) in enumerate(needs):
            merged = cls.merge(have, need) if kind == cls.kind else None
            if merged is not None:
                needs[i] = (kind, merged)
                break
        else:
            needs.append((cls.kind, need))
    order = unit_kinds()
    return sorted(needs, key=lambda kv: (order.index(kv[0]), sorted(kv[1].items())))


class RtlKernels:
    """Substitutes for the golden kernels that run the Verilated unit and check every result.

    Parameters
    ----------
    rows, cols : PE array of every unit.
    max_k : the units' largest K (docs/numerics.md); default the contract's 32768, which is
        also the bound the golden kernels put on biases (a smaller unit has a narrower bias).
    lanes : XNOR unit lanes (bits of K per beat); any unit parameter given here applies to the
        kinds that take it.
    units : ``[(kind, params)]`` built up front (:func:`units_for_model`); a call that none of
        them covers gets a unit of its own parameters.
    fault : test only: build every unit as the faulty variant ``fault`` of
        :data:`lowbit.hw.faults.FAULTS` (co-simulation must then report a mismatch).

    Use :meth:`kernels` with :func:`lowbit.sw.quant.kernels.use_kernels`. Each call computes the
    golden result, runs the RTL on the same operands, compares them with equality and returns
    the RTL's result (a torch tensor like the golden one); a difference raises
    :class:`CosimMismatch`.
    """

    def __init__(self, *, rows: int = 8, cols: int = 8, max_k: int = DEFAULT_MAX_K,
                 lanes: int = 32, units=(), fault: str | None = None):
        self.options = {"rows": rows, "cols": cols, "max_k": max_k, "lanes": lanes}
        self.fault = fault
        self.replay: GoldenRecord | None = None   # set per batch by the worker
        self._units: list = []          # [(kind, params, VerilatedUnit, UnitStats)]
        self.calls = 0
        self._hook = None
        self._golden_fns = golden_kernels()
        for kind, params in units:
            self._make(kind, params)

    # -- units --------------------------------------------------------------------------------
    def unit_params(self, kind: str, need: dict) -> dict:
        """The parameters of a unit of ``kind`` built for ``need``: the options it takes
        (rows, cols, max_k, lanes ...), then ``need`` (and the test-only ``fault``)."""
        names = [p.name for p in unit_class(kind).all_parameters()]
        params = {k: v for k, v in self.options.items() if k in names}
        params.update(need)
        if self.fault is not None:
            params["fault"] = self.fault
        return params

    def _make(self, kind: str, need: dict):
        from lowbit.sim.harness import VerilatedUnit

        params = self.unit_params(kind, need)
        rtl = VerilatedUnit(kind, weight_cache=True, **params)
        entry = (kind, rtl.hw.params, rtl, UnitStats(kind, dict(params)))
        self._units.append(entry)
        return entry

    def unit(self, kind: str, need: dict):
        """``(VerilatedUnit, UnitStats)`` of a unit of ``kind`` covering ``need`` (made on
        first use when none does)."""
        cls = unit_class(kind)
        for k, have, rtl, st in self._units:
            if k == kind and cls.covers(have, need):
                return rtl, st
        return self._make(kind, need)[2:]

    def stats(self) -> list[UnitStats]:
        return [e[3] for e in self._units]

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

        def hook(which, words):
            if which != stream or self.calls != call:
                return words
            words = words.copy()
            words[0, 0] ^= np.uint32(1 << bit)
            self._hook = None               # once
            return words
        self._hook = hook

    def kernels(self) -> dict:
        """``{kernel name: substitute}`` for :func:`lowbit.sw.quant.kernels.use_kernels`."""
        return {name: self._substitute(kind_of_kernel(name), name, inspect.signature(fn))
                for name, fn in self._golden_fns.items()}

    def _substitute(self, cls, name: str, sig):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            want = self._golden(name, args, kwargs)
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            return self._run(cls, name, bound.arguments, want, time.perf_counter() - t0)
        run.__name__ = name
        return run

    # -- one call ---------------------------------------------------------------------------------
    def _golden(self, name: str, args, kwargs) -> torch.Tensor:
        """The golden kernel's result for these operands: replayed from the golden decode of
        the same batch (:class:`GoldenRecord`) when that call had exactly these operands,
        computed otherwise."""
        if self.replay is not None:
            want = self.replay.lookup(name, args, kwargs)
            if want is not None:
                return want
        return self._golden_fns[name](*args, **kwargs)

    @staticmethod
    def _site_name() -> str:
        from lowbit.sw.quant import kernels

        site = kernels.current_site()
        return site.name if site is not None else "(no site)"

    def _run(self, cls, kernel: str, call: dict, want, golden_s: float):
        from lowbit.hw.packing import Matmul

        rtl, st = self.unit(cls.kind, cls.need_of_call(call))
        self.calls += 1
        hw = rtl.hw
        a, w, extra, bias = cls.call_operands(call)
        nd = cls.operand_ndim
        # Batched operands (Q.K^T, attention.V): one independent matmul per batch element.
        batch = tuple(torch.broadcast_shapes(a.shape[:-nd], w.shape[:-nd]))
        an = _np64(a.expand(*batch, *a.shape[-nd:])).reshape(-1, *a.shape[-nd:])
        key = None
        if w.dim() == nd:   # a layer's weights: shared by the batch, packed once per model
            wn = _Lazy(w)
            key = (tuple(_tensor_key(v) for v in (w, *extra.values())), (w, *extra.values()))
        else:
            wn = _np64(w.expand(*batch, *w.shape[-nd:])).reshape(-1, *w.shape[-nd:])
        ex = {k: _np64(v) if isinstance(v, torch.Tensor) else int(v) for k, v in extra.items()}
        ops = hw.operands(an, wn, ex)
        if ops.k > hw.max_k:
            raise LowbitError(f"{self._site_name()}: K={ops.k} exceeds the unit's max_k "
                              f"{hw.max_k} (raise --max-k)")
        b = self._bias(bias, ops.n, hw)
        t1 = time.perf_counter()
        zeros = np.zeros(ops.n, np.int64)
        job = rtl.packer.job(Matmul(ops, b, zeros, zeros, raw=True), w_key=key)
        acc, cycles, calls, sim = rtl.run(job, hook=self._hook)
        st.calls += 1
        st.harness_calls += calls
        st.cycles += cycles
        st.beats += job.x_beats
        st.macs += job.macs
        st.ideal_cycles += job.ideal_cycles
        st.golden_seconds += golden_s
        st.sim_seconds += sim
        st.pack_seconds += time.perf_counter() - t1 - sim
        shapes = [tuple(a.shape), tuple(w.shape)] + ([f"K={ops.k}"] if "k" in extra else [])
        return self._compare(kernel, acc.reshape(*batch, ops.m, ops.n), want, shapes)

    def _bias(self, bias, n: int, hw) -> np.ndarray:
        if bias is None:
            return np.zeros(n, np.int64)
        b = _np64(bias)
        if b.size and int(np.abs(b).max()) > hw.bias_bound:
            raise LowbitError(f"{self._site_name()}: bias up to {int(np.abs(b).max())} exceeds "
                              f"the unit's bias range {hw.bias_bound} at max_k {hw.max_k} "
                              f"(raise --max-k)")
        return b

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
