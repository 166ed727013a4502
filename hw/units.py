"""One description per unit kind, built from the unit's parameters, and the registry of kinds.

A description is to a unit what amaranth's ``wiring.Signature`` is to a component: an object
that says everything the rest of lowbit needs to know about a unit without elaborating (or
even constructing) any hardware. From its parameters, validated up front with messages that
name the parameter (:class:`ParameterError`), a description gives

* the payload layouts of the ``x``, ``cfg`` and ``y`` streams, the accumulator width and the
  largest K (docs/hardware.md);
* how the unit's operands become beat fields (read by the one packer, :mod:`lowbit.hw.packing`)
  and how observed beats become golden operands again (the cocotb testbench's model);
* the golden kernel it answers to and the RTL that implements it, both named by dotted path
  and resolved only when called, so this module imports neither torch nor the RTL;
* its identification registers, CLI flags, module names, display text and verification
  operands.

Every unit kind registers its description once (:func:`register_unit`); the driver, the
compiled harness, the cocotb testbench, co-simulation, the accelerator top, the FPGA flow and
the CLI look kinds up here (:func:`unit_kinds`, :func:`describe`) and never branch on a kind's
name. docs/architecture.md says which files a new kind touches.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from lowbit.contract import (
    ACC_MAX_BITS, ALPHA_BITS, DEFAULT_MAX_K, MULT_BITS, SHIFT_MAX, accumulator_width, bias_bound,
    ceil_div, int_max_product, int_range, log_depth, log_max_product, xnor_max_product,
)

from .packing import Chunks, Operands, as_int64, bit_windows, pack_bits

__all__ = ["ParameterError", "ParameterValueError", "ParameterTypeError", "Param", "Flag",
           "UnitDescription", "MatrixUnitDescription", "IntDescription", "LogDescription",
           "XnorDescription", "kind_of_code", "kind_of_kernel",
           "register_unit", "unregister_unit", "unit_kinds", "unit_class", "describe", "resolve",
           "MAX_ARRAY", "MAX_LANES", "PLANE_BITS", "SHIFT_BITS"]

MAX_ARRAY = 64      # largest rows / cols of the PE array
MAX_LANES = 256     # largest XNOR lane count (bits of K per beat)
PLANE_BITS = 3      # XNOR activation plane index field: planes 0..7
SHIFT_BITS = SHIFT_MAX.bit_length()


# ---------------------------------------------------------------------------------------------
# Parameters and their errors


class ParameterError(Exception):
    """A unit parameter is not acceptable.

    ``param`` is the parameter's keyword (``"max_k"``), ``label`` the subject of the message
    (``"Max K"``) and ``detail`` the rest (``"must be a positive integer, not 0"``); ``str()``
    is ``"Max K must be a positive integer, not 0"``. :meth:`named` puts another subject in
    front, e.g. the command-line flag that set the parameter.
    """

    def __init__(self, param: str, label: str, detail: str, *, what: str | None = None,
                 value=None):
        self.param, self.label, self.detail = param, label, detail
        self.what, self.value = what, value     # "must be WHAT, not VALUE", when it says so
        super().__init__(f"{label} {detail}")

    def named(self, name: str, note: str = "") -> str:
        """The message with ``name`` as its subject; ``note`` qualifies the expected range
        (``"--bits must be an integer in 2..8 for int8, not 1"``)."""
        if note and self.what is not None:
            return f"{name} must be {self.what}{note}, not {self.value!r}"
        return f"{name} {self.detail}"


class ParameterValueError(ParameterError, ValueError):
    """A parameter of the right type with a value out of range (or inconsistent with another)."""


class ParameterTypeError(ParameterError, TypeError):
    """A parameter of the wrong type (or one the unit does not take)."""


@dataclass(frozen=True)
class Param:
    """One keyword parameter of a unit: its default and its range.

    ``lo``/``hi`` bound an integer (``hi=None``: no upper bound); ``lo=None`` makes it a bool.
    ``size=True`` words the upper bound as an array size does ("must be at most 64").
    ``help`` describes it for the CLI; its flag is ``--`` and the name with dashes.
    """
    name: str
    label: str
    default: object
    lo: int | None = None
    hi: int | None = None
    size: bool = False
    help: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def is_bool(self) -> bool:
        return self.lo is None

    @property
    def range_text(self) -> str:
        if self.is_bool:
            return ""
        return f"{self.lo}..{self.hi}" if self.hi is not None else f">= {self.lo}"

    def check(self, value):
        """``value`` if acceptable, else :class:`ParameterTypeError` /
        :class:`ParameterValueError` with the exact message."""
        def fail(cls, what):
            raise cls(self.name, self.label, f"must be {what}, not {value!r}", what=what,
                      value=value)
        if self.is_bool:
            if not isinstance(value, bool):
                fail(ParameterTypeError, "a bool")
            return value
        is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if self.hi is None or self.size:
            what = "a positive integer" if self.lo == 1 else f"an integer >= {self.lo}"
            if not is_int:
                fail(ParameterTypeError, what)
            if value < self.lo:
                fail(ParameterValueError, what)
            if self.size and value > self.hi:
                fail(ParameterValueError, f"at most {self.hi}")
            return int(value)
        what = f"an integer in {self.lo}..{self.hi}"
        if not is_int:
            fail(ParameterTypeError, what)
        if not self.lo <= value <= self.hi:
            fail(ParameterValueError, what)
        return int(value)


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets several parameters at once (``--planes`` sets
    ``a_planes`` and ``w_planes``). A parameter's own flag wins over such a flag."""
    flag: str
    params: tuple[str, ...]
    help: str


ROWS = Param("rows", "Rows", 4, 1, MAX_ARRAY, size=True, help="PE array rows")
COLS = Param("cols", "Cols", 4, 1, MAX_ARRAY, size=True, help="PE array columns")
MAX_K = Param("max_k", "Max K", DEFAULT_MAX_K, 1,
              help="largest K the accumulator is sized for")
OUT_BITS = Param("out_bits", "Out bits", 8, 2, 32, help="requantized output width")


def resolve(target):
    """A callable given directly or by dotted path ``"package.module:name"``, imported now."""
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _tensor(x):
    import torch    # the golden kernels are PyTorch; only a golden call needs it

    return torch.as_tensor(x) if isinstance(x, np.ndarray) else x


# ---------------------------------------------------------------------------------------------
# The description


class UnitDescription:
    """What lowbit knows about one unit kind, for one set of parameters.

    Subclasses set the class attributes below and implement the operand methods; the
    constructor validates the parameters (:class:`ParameterError`, in the order rows, cols,
    out_bits, max_k, then the kind's own) and sets one attribute per parameter.

    Class attributes
    ----------------
    kind : str
        The registry key and ``--unit`` value (``"int8"``).
    kind_code : int
        Its code in the ``VERSION.KIND`` identification field.
    golden, rtl : str or callable
        The golden kernel (``"lowbit.sw.golden:int_matmul"``) and the Amaranth component class
        (``"lowbit.hw.matmul:IntMatmul"``, built with the parameters as keywords).
    parameters : tuple of Param
        The kind's own parameters (rows, cols, max_k and out_bits are common).
    aliases : tuple of Flag
        CLI flags that set several parameters (``--bits``, ``--planes``).
    extra_operands : tuple of str
        Keyword operands besides ``a`` and ``w`` (XNOR: ``alpha``, ``k``).
    need : dict
        Operand parameters a kernel call needs, ``name -> "max" | "equal"``: a unit covers a
        call if its values are at least (``max``) or exactly (``equal``) the call's.
    """
    kind: str = ""
    kind_code: int = 0
    golden: object = None
    rtl: object = None
    parameters: tuple = ()
    aliases: tuple = ()
    extra_operands: tuple = ()
    need: dict = {}
    requantize = "lowbit.sw.golden:requantize"
    family = "matmul"                   # "matmul" or "vector" (lowbit.hw.vector)
    fpga_base: dict | None = None       # parameters of the FPGA bench's size sweep
    fpga_sweep: tuple = ()              # (bits, parameters) of the FPGA bench's bit sweep

    def __init__(self, **params):
        names = self.check_names(params)
        by_name = {p.name: p for p in self.all_parameters()}
        values = {}
        for name in ("rows", "cols", "out_bits", "max_k") + tuple(p.name for p in self.parameters):
            values[name] = by_name[name].check(params.get(name, by_name[name].default))
        self.params = {name: values[name] for name in names}
        for name, value in self.params.items():
            setattr(self, name, value)
        self.check_parameters()
        width = self.acc_width
        if width > ACC_MAX_BITS:
            raise ParameterValueError("max_k", MAX_K.label,
                                      f"{self.max_k} needs a {width}-bit accumulator; at most "
                                      f"{ACC_MAX_BITS} bits are allowed")

    @classmethod
    def check_names(cls, params: dict) -> list[str]:
        """The parameter names of the kind; :class:`ParameterTypeError` for any key of
        ``params`` that is not one of them."""
        names = [p.name for p in cls.all_parameters()]
        for name in params:
            if name not in names:
                raise ParameterTypeError(name, f"Unknown parameter {name!r} for the {cls.kind} "
                                         f"unit", f"(it takes {', '.join(names)})")
        return names

    @classmethod
    def all_parameters(cls) -> tuple:
        """Every parameter in keyword order: rows, cols, the kind's own, max_k, out_bits."""
        return (ROWS, COLS, *cls.parameters, MAX_K, OUT_BITS)

    def check_parameters(self) -> None:
        """Rules between parameters (raise :class:`ParameterError`); none by default."""

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(other) is type(self) and other.params == self.params

    def __hash__(self):
        return hash((type(self), tuple(self.params.items())))

    # --- widths and layouts --------------------------------------------------------------

    @property
    def max_product(self) -> int:
        """Largest ``|product|`` one PE adds per element of K (docs/numerics.md, ``Pmax``)."""
        raise NotImplementedError

    @property
    def acc_width(self) -> int:
        return accumulator_width(self.max_product, self.max_k)

    @property
    def y_width(self) -> int:
        return max(self.acc_width, self.out_bits)

    @property
    def bias_bound(self) -> int:
        return bias_bound(self.max_product, self.max_k)

    def beat_fields(self) -> dict:
        """The kind's fields of an ``x`` beat (besides ``last``): name -> shape."""
        raise NotImplementedError

    @cached_property
    def x_layout(self) -> data.StructLayout:
        return data.StructLayout({**self.beat_fields(), "last": unsigned(1)})

    @cached_property
    def cfg_layout(self) -> data.StructLayout:
        cols = self.cols
        return data.StructLayout({
            "bias": data.ArrayLayout(signed(self.acc_width), cols),
            "mult": data.ArrayLayout(unsigned(MULT_BITS), cols),
            "shift": data.ArrayLayout(unsigned(SHIFT_BITS), cols),
            "relu": unsigned(1),
            "raw": unsigned(1),
        })

    @cached_property
    def y_layout(self) -> data.StructLayout:
        return data.StructLayout({"data": data.ArrayLayout(signed(self.y_width), self.cols),
                                  "last": unsigned(1)})

    macs_per_pe = 1     # native MACs one PE does per beat (XNOR: 1-bit MACs, one per lane)
    k_per_beat = 1      # elements of K one beat carries at most

    @property
    def k_budget(self) -> int:
        """Largest per-tile sum of beat costs (the accelerator's K_OVERFLOW check)."""
        return self.max_k

    # --- names ----------------------------------------------------------------------------

    @property
    def module_name(self) -> str:
        return f"{self.kind}_matmul"

    @property
    def accel_name(self) -> str:
        return f"{self.kind}_accel"

    def build(self, *, src_loc_at: int = 0):
        """The unit's Amaranth component (a :class:`lowbit.hw.matmul.MatmulUnit`)."""
        return resolve(type(self).rtl)(**self.params, src_loc_at=1 + src_loc_at)

    # --- identification registers ----------------------------------------------------------

    def id_operands(self) -> dict:
        """Values of the ``OPERANDS`` register's fields (``A``, ``W``, ``LANES``,
        ``ZERO_CODE``; absent fields read 0)."""
        raise NotImplementedError

    @classmethod
    def params_from_id(cls, operands: dict) -> dict:
        """The kind's own parameters from the ``OPERANDS`` fields (inverse of
        :meth:`id_operands`)."""
        raise NotImplementedError

    # --- display ---------------------------------------------------------------------------

    def params_text(self) -> str:
        """Short text of the kind's own parameters (FPGA table's ``bits`` column)."""
        raise NotImplementedError

    def precision_text(self) -> str:
        """The unit and its precision (FPGA cost table)."""
        raise NotImplementedError

    bits_param = ""                 # the parameter that counts bits per weight
    series = ""                     # legend of the FPGA cost plot
    mac_name = "MAC"                # what one of its MACs is called in tables
    int8_eq_macs = None             # native MACs per INT8-equivalent MAC, if not 1

    @property
    def precision_macs_per_pe(self) -> float:
        """MACs one PE does per beat at the unit's precision (XNOR: ``lanes / (a_planes *
        w_planes)`` p-bit MACs)."""
        return self.macs_per_pe

    @property
    def precision_bits(self) -> int:
        """Bits per weight (the FPGA cost plot's x axis)."""
        return self.params[self.bits_param]

    @classmethod
    def macs_text(cls, macs: float) -> str:
        """MACs per cycle for a table."""
        return f"{macs:g}"

    def summary(self) -> str:
        """One line: the parameters, accumulator width and payload widths."""
        return (f"{self.kind} {self.rows}x{self.cols}, accumulator {self.acc_width} bits, "
                f"x__payload {self.x_layout.size} bits, cfg__payload {self.cfg_layout.size} "
                f"bits, y__payload {self.y_layout.size} bits")

    # --- operands ----------------------------------------------------------------------------

    def check_operands(self, a, w, extra: dict) -> Operands:
        """One matmul's operands, validated (ValueError/TypeError naming the operand)."""
        unknown = set(extra) - set(self.extra_operands)
        if unknown:
            takers = [c for c in _REGISTRY.values() if unknown & set(c.extra_operands)]
            names = list(dict.fromkeys(n for c in takers for n in c.extra_operands)) \
                or sorted(unknown)
            raise ValueError(f"{' and '.join(names)} apply to the "
                             f"{' and '.join(c.kind for c in takers) or 'no'} unit only, "
                             f"not {self.kind}")
        ops = self.operands(a, w, extra, check=True)
        if not isinstance(ops.k, (int, np.integer)) or not 1 <= ops.k <= self.max_k:
            raise ValueError(f"K must be in 1..{self.max_k}, not {ops.k}")
        return ops

    def operands(self, a, w, extra: dict, *, check: bool = False) -> Operands:
        """The :class:`~lowbit.hw.packing.Operands` of ``a``, ``w`` and ``extra``; ``check``
        validates one matmul's shapes, else ``a`` and ``w`` carry a leading batch axis."""
        raise NotImplementedError

    def beat_shape(self, ops: Operands) -> tuple:
        """The beat axes of a tile, outer first (INT: ``(K,)``)."""
        raise NotImplementedError

    def activation_fields(self, ops: Operands) -> dict:
        """Beat fields from the activations: array fields ``[batch, M, *beat axes]``, plain
        fields ``[*beat axes]`` (axes may be 1 where the values do not vary)."""
        raise NotImplementedError

    def weight_fields(self, ops: Operands) -> dict:
        """Beat fields from the weights: array fields ``[wbatch, N, *beat axes]``, plain
        fields ``[*beat axes]``."""
        raise NotImplementedError

    def macs(self, ops: Operands) -> int:
        """Native MACs of the matmul (the ideal cycles are ``macs / (rows * cols *
        macs_per_pe)``)."""
        return ops.batch * ops.m * ops.n * ops.k

    def tile_operands(self, beats: dict) -> list[tuple[Operands, int]]:
        """Golden operands of one tile from its decoded ``x`` beats (``{field: [beats,
        ...]}``): ``[(operands, shift)]`` whose golden sums, shifted left by ``shift``, add up
        to the tile's accumulator."""
        raise NotImplementedError

    # --- the golden model ------------------------------------------------------------------

    def golden_kernel(self):
        # read from the class: a function stored there is not a method of the description
        return resolve(type(self).golden)

    def golden_arguments(self, ops: Operands, bias) -> tuple[tuple, dict]:
        """Positional and keyword arguments of the golden kernel for one matmul."""
        raise NotImplementedError

    def golden_accumulator(self, ops: Operands, bias=None) -> np.ndarray:
        """``acc + bias`` of one matmul from the golden kernel, which checks every range."""
        args, kwargs = self.golden_arguments(ops, bias)
        out = self.golden_kernel()(*(_tensor(x) for x in args), **kwargs)
        return out.numpy()

    def golden_result(self, mm) -> np.ndarray:
        """The golden output of a :class:`~lowbit.hw.packing.Matmul`: ``acc + bias``, or its
        requantization (docs/numerics.md)."""
        t = self.golden_accumulator(mm.ops, mm.bias)
        return t if mm.raw else self.golden_output(t, mm.mult, mm.shift, mm.relu)

    def golden_output(self, t, mult, shift, relu: bool) -> np.ndarray:
        """The golden requantization of accumulators ``t [..., N]`` (docs/numerics.md)."""
        out = resolve(self.requantize)(_tensor(np.asarray(t)), _tensor(np.asarray(mult)),
                                       _tensor(np.asarray(shift)), out_bits=self.out_bits,
                                       relu=relu)
        return out.numpy()

    # --- co-simulation ----------------------------------------------------------------------

    operand_ndim = 2    # dimensions of one matmul's ``a`` in a golden call (more: a batch)

    @classmethod
    def call_operands(cls, call: dict) -> tuple:
        """``(a, w, extra, bias)`` of a golden kernel call (its bound arguments)."""
        raise NotImplementedError

    @classmethod
    def need_of_call(cls, call: dict) -> dict:
        """The operand parameters (keys of :attr:`need`) a golden kernel call needs."""
        return {k: call[k] for k in cls.need}

    @classmethod
    def need_of_site(cls, params: dict) -> dict:
        """The operand parameters a model's matmul site needs (from its ``params``)."""
        return {k: params[k] for k in cls.need if k in params}

    @classmethod
    def merge(cls, have: dict, need: dict) -> dict | None:
        """Parameters covering both ``have`` and ``need``, or None if no unit can."""
        out = dict(have)
        defaults = {p.name: p.default for p in cls.all_parameters()}
        for key, rule in cls.need.items():
            if key not in have and key not in need:
                continue
            hv, nv = have.get(key, defaults[key]), need.get(key, defaults[key])
            if rule == "equal" and hv != nv:
                return None
            out[key] = max(hv, nv) if rule == "max" else hv
        return out

    @classmethod
    def covers(cls, have: dict, need: dict) -> bool:
        """Whether a unit with parameters ``have`` runs every call that needs ``need``."""
        merged = cls.merge(have, need)
        return merged is not None and all(merged[k] == have.get(k) for k in need)

    # --- verification operands -----------------------------------------------------------------

    def random_operands(self, rng: np.random.Generator, m: int, k: int, n: int) -> dict:
        """A random matmul's ``a``, ``w`` and extra operands over their full ranges."""
        raise NotImplementedError

    def extreme_operands(self, m: int, k: int, n: int) -> dict:
        """Operands whose every product has the largest magnitude: positive in even output
        columns, negative in odd ones."""
        raise NotImplementedError

    def special_cases(self, rng: np.random.Generator, kmax: int, m: int,
                      n: int) -> list[tuple[str, dict]]:
        """The kind's own corner cases: ``[(name, operands and settings)]``."""
        return []


# ---------------------------------------------------------------------------------------------
# The registry


_REGISTRY: dict[str, type] = {}


def register_unit(cls: type) -> type:
    """Add a description class to the registry under ``cls.kind`` (usable as a decorator).

    Raises ValueError if another class has that kind or kind code.
    """
    if not (isinstance(cls, type) and issubclass(cls, UnitDescription)) or not cls.kind:
        raise TypeError(f"a unit description must be a UnitDescription subclass with a kind, "
                        f"not {cls!r}")
    for kind, other in _REGISTRY.items():
        if other is cls:
            return cls
        if kind == cls.kind or other.kind_code == cls.kind_code:
            raise ValueError(f"unit kind {cls.kind!r} (code {cls.kind_code}) is taken by "
                             f"{other.__name__}")
    _REGISTRY[cls.kind] = cls
    return cls


def unregister_unit(kind: str) -> None:
    """Take ``kind`` out of the registry (a test's or a plug-in's own kind)."""
    _REGISTRY.pop(kind, None)


def unit_kinds(family: str | None = None) -> tuple[str, ...]:
    """Every registered kind (of ``family``, ``"matmul"`` or ``"vector"``, if given), in
    registration order."""
    return tuple(k for k, c in _REGISTRY.items() if family is None or c.family == family)


def unit_class(kind: str, family: str | None = None) -> type:
    """The description class of ``kind`` (a kind of ``family``, if given); ValueError
    ``unknown unit 'x' (choose from ...)``."""
    kinds = unit_kinds(family)
    if not isinstance(kind, str) or kind not in kinds:
        raise ValueError(f"unknown unit {kind!r} (choose from {', '.join(kinds)})")
    return _REGISTRY[kind]


def describe(kind: str, **params) -> UnitDescription:
    """The description of unit ``kind`` with ``params`` (validated)."""
    return unit_class(kind)(**params)


def kind_of_code(code: int) -> str | None:
    for kind, cls in _REGISTRY.items():
        if cls.kind_code == code:
            return kind
    return None


def kind_of_kernel(kernel: str) -> type | None:
    """The description class whose golden kernel is named ``kernel`` (``"int_matmul"``)."""
    for cls in _REGISTRY.values():
        if isinstance(cls.golden, str) and cls.golden.rpartition(":")[2] == kernel:
            return cls
    return None


# ---------------------------------------------------------------------------------------------
# The three matmul units


def _signed(rng, bits, shape):
    lo, hi = int_range(bits)
    return rng.integers(lo, hi + 1, shape, dtype=np.int64)


class MatrixUnitDescription(UnitDescription):
    """A unit whose operands are integer matrices ``A [..., M, K]`` and ``W [..., N, K]``, one
    element of K per beat, in the fields ``a`` (one per array row) and ``w`` (one per column):
    INT, log. A subclass gives ``beat_fields``, ``max_product``, its parameters and display
    text; its golden kernel takes ``(a, w, bias, **need, max_k=...)``."""
    w_name = "weights"

    def operands(self, a, w, extra, *, check=False):
        if check:
            sa, sw = np.shape(a), np.shape(w)
            if len(sa) != 2 or len(sw) != 2 or sa[1] != sw[1]:
                raise ValueError(f"activations must be [M, K] and weights [N, K]; "
                                 f"got {sa} and {sw}")
            a, w = as_int64("activations", a)[None], as_int64(self.w_name, w)[None]
        return Operands(a=a, w=w, m=a.shape[-2], n=w.shape[-2], k=a.shape[-1],
                        batch=a.shape[0], wbatch=w.shape[0])

    def beat_shape(self, ops):
        return (ops.k,)

    def activation_fields(self, ops):
        return {"a": ops.a}

    def weight_fields(self, ops):
        return {"w": ops.weights()}

    def tile_operands(self, beats):
        a, w = beats["a"].T, beats["w"].T                       # [rows, K], [cols, K]
        return [(Operands(a=a[None], w=w[None], m=len(a), n=len(w), k=a.shape[1]), 0)]

    @classmethod
    def call_operands(cls, call):
        a_name, w_name = list(call)[:2]
        return call[a_name], call[w_name], {}, call["bias"]

    def golden_arguments(self, ops, bias):
        return (ops.a[0], ops.weights()[0], bias), self.golden_kwargs()

    def golden_kwargs(self) -> dict:
        return {name: self.params[name] for name in self.need} | {"max_k": self.max_k}


@register_unit
class IntDescription(MatrixUnitDescription):
    """INT unit (INT8, also INT2..INT8): ``acc += a * w``, signed x signed (docs/numerics.md)."""
    kind, kind_code = "int8", 1
    golden = "lowbit.sw.golden:int_matmul"
    rtl = "lowbit.hw.matmul:IntMatmul"
    parameters = (Param("a_bits", "A bits", 8, 2, 8, help="activation bits"),
                  Param("w_bits", "W bits", 8, 2, 8, help="weight bits"))
    aliases = (Flag("--bits", ("a_bits", "w_bits"), "activation and weight bits"),)
    need = {"a_bits": "max", "w_bits": "max"}
    bits_param, series = "w_bits", "INT (a = w bits)"
    fpga_base = {}
    fpga_sweep = tuple((b, {"a_bits": b, "w_bits": b} if b != 8 else {}) for b in (4, 8))

    @property
    def max_product(self):
        return int_max_product(self.a_bits, self.w_bits)

    def beat_fields(self):
        return {"a": data.ArrayLayout(signed(self.a_bits), self.rows),
                "w": data.ArrayLayout(signed(self.w_bits), self.cols)}

    def id_operands(self):
        return {"A": self.a_bits, "W": self.w_bits}

    @classmethod
    def params_from_id(cls, f):
        return {"a_bits": f["A"], "w_bits": f["W"]}

    def params_text(self):
        return f"a{self.a_bits}w{self.w_bits}"

    def precision_text(self):
        return f"INT a{self.a_bits} w{self.w_bits}"

    def random_operands(self, rng, m, k, n):
        return {"a": _signed(rng, self.a_bits, (m, k)), "w": _signed(rng, self.w_bits, (n, k))}

    def extreme_operands(self, m, k, n):
        # -2**(a-1) * -2**(w-1) in even columns, -2**(a-1) * (2**(w-1) - 1) in odd ones
        w_min, w_max = int_range(self.w_bits)
        w = np.full((n, k), w_min, np.int64)
        w[1::2] = w_max
        return {"a": np.full((m, k), int_range(self.a_bits)[0], np.int64), "w": w}


@register_unit
class LogDescription(MatrixUnitDescription):
    """Log-shift unit: power-of-two weight codes, the multiply is a shift and a negate."""
    kind, kind_code = "log", 2
    golden = "lowbit.sw.golden:log_matmul"
    rtl = "lowbit.hw.matmul:LogMatmul"
    w_name = "codes"
    parameters = (Param("bits", "Bits", 4, 1, 8, help="log code bits"),
                  Param("a_bits", "A bits", 8, 2, 8, help="activation bits"),
                  Param("zero_code", "Zero code", False,
                        help="log codes with an exact zero (bits >= 2)"))
    need = {"bits": "equal", "a_bits": "max", "zero_code": "equal"}
    bits_param, series = "bits", "log-shift (code bits, int8 act.)"
    fpga_base = {"bits": 4}
    fpga_sweep = tuple((b, {"bits": b}) for b in (2, 4))

    def check_parameters(self):
        if self.zero_code and self.bits < 2:
            raise ParameterValueError("zero_code", "Zero code",
                                      f"needs at least 2 bits, not {self.bits}")

    @property
    def depth(self) -> int:
        """Distinct magnitudes of the codes (docs/numerics.md)."""
        return log_depth(self.bits, self.zero_code)

    @property
    def max_product(self):
        return log_max_product(self.a_bits, self.bits, self.zero_code)

    def beat_fields(self):
        return {"a": data.ArrayLayout(signed(self.a_bits), self.rows),
                "w": data.ArrayLayout(unsigned(self.bits), self.cols)}

    def id_operands(self):
        return {"A": self.a_bits, "W": self.bits, "ZERO_CODE": int(self.zero_code)}

    @classmethod
    def params_from_id(cls, f):
        return {"bits": f["W"], "a_bits": f["A"], "zero_code": bool(f["ZERO_CODE"])}

    def params_text(self):
        return f"{self.bits}-bit" + (" zero" if self.zero_code else "")

    def precision_text(self):
        return f"log {self.bits}-bit code, a{self.a_bits}"

    def codes(self, rng, shape, zero_share=0.1):
        """Random valid codes; with the zero code, about ``zero_share`` of them zero."""
        sign = rng.integers(0, 2, shape, dtype=np.int64)
        idx = rng.integers(0, self.depth, shape, dtype=np.int64)
        if self.zero_code:
            idx = np.where(rng.random(shape) < zero_share, self.depth, idx)
        return (sign << (self.bits - 1)) | idx

    def random_operands(self, rng, m, k, n):
        return {"a": _signed(rng, self.a_bits, (m, k)), "w": self.codes(rng, (n, k))}

    def extreme_operands(self, m, k, n):
        w = np.full((n, k), 1 << (self.bits - 1), np.int64)     # -largest magnitude
        w[1::2] = 0                                             # +largest magnitude
        return {"a": np.full((m, k), int_range(self.a_bits)[0], np.int64), "w": w}

    def special_cases(self, rng, kmax, m, n):
        # Every valid code (the zero code included) in one weight row each.
        top = self.depth if self.zero_code else self.depth - 1
        codes = np.array([c for c in range(1 << self.bits)
                          if (c & ((1 << (self.bits - 1)) - 1)) <= top], np.int64)
        kk = min(kmax, len(codes))
        cases = [("every_code", {"a": _signed(rng, self.a_bits, (m, kk)),
                                 "w": np.stack([np.roll(codes, s)[:kk] for s in range(n)]),
                                 "raw": True})]
        if self.zero_code:
            zero = np.full((n, kk), self.depth, np.int64)
            zero[1::2] |= 1 << (self.bits - 1)
            cases.append(("zero_codes", {"a": _signed(rng, self.a_bits, (m, kk)), "w": zero,
                                         "bias": rng.integers(-9, 10, n), "raw": True}))
        return cases


@register_unit
class XnorDescription(UnitDescription):
    """XNOR-popcount unit over bit planes with integer plane scales (BMT, binary coding)."""
    kind, kind_code = "xnor", 3
    golden = "lowbit.sw.golden:xnor_matmul"
    rtl = "lowbit.hw.matmul:XnorMatmul"
    parameters = (Param("a_planes", "A planes", 1, 1, 8, help="activation planes"),
                  Param("w_planes", "W planes", 1, 1, 8, help="weight planes"),
                  Param("lanes", "Lanes", 32, 1, MAX_LANES, help="bits of K per beat"))
    aliases = (Flag("--planes", ("a_planes", "w_planes"), "activation and weight planes"),
               Flag("--bits", ("a_planes", "w_planes"), "activation and weight planes"))
    extra_operands = ("alpha", "k")
    need = {"a_planes": "max", "w_planes": "max"}
    bits_param, series = "w_planes", "XNOR-popcount (a = w planes)"
    mac_name = "1-bit MAC"
    fpga_base = {"lanes": 32}
    fpga_sweep = tuple((p, {"a_planes": p, "w_planes": p, "lanes": 32} if p != 1
                        else {"lanes": 32}) for p in (1, 2))
    # An 8-bit x 8-bit product decomposed into bit planes takes 8 x 8 plane pairs: 64 binary
    # MACs (a throughput equivalence, not INT8 arithmetic).
    int8_eq_macs = 64

    @property
    def max_product(self):
        return xnor_max_product(self.a_planes, self.w_planes)

    @property
    def macs_per_pe(self):
        return self.lanes

    @property
    def k_per_beat(self):
        return self.lanes

    @property
    def precision_macs_per_pe(self):
        return self.lanes / (self.a_planes * self.w_planes)

    @property
    def k_budget(self):
        return self.max_k * ((1 << self.a_planes) - 1) * self.w_planes

    def beat_fields(self):
        # wplane: the beat's weight plane (absent with one); the unit applies alpha per weight
        # plane and column at the drain, so the beats of a tile with one wplane share alpha.
        wplane = {"wplane": unsigned((self.w_planes - 1).bit_length())} \
            if self.w_planes > 1 else {}
        return {"a": data.ArrayLayout(unsigned(self.lanes), self.rows),
                "w": data.ArrayLayout(unsigned(self.lanes), self.cols),
                "alpha": data.ArrayLayout(unsigned(ALPHA_BITS), self.cols),
                "plane": unsigned(PLANE_BITS),
                **wplane,
                "count": unsigned(self.lanes.bit_length())}

    def id_operands(self):
        return {"A": self.a_planes, "W": self.w_planes, "LANES": self.lanes}

    @classmethod
    def params_from_id(cls, f):
        return {"a_planes": f["A"], "w_planes": f["W"], "lanes": f["LANES"]}

    def params_text(self):
        return f"{self.a_planes}x{self.w_planes} planes, {self.lanes} lanes"

    def precision_text(self):
        return f"XNOR {self.params_text()}"

    @classmethod
    def macs_text(cls, macs):
        return f"{macs:g} 1-bit ({macs / cls.int8_eq_macs:g} int8-eq)"

    # --- operands: packed planes, beats (K-chunk, weight plane i, activation plane j) --------

    def operands(self, a, w, extra, *, check=False):
        alpha, k = extra.get("alpha"), extra.get("k")
        if check:
            if alpha is None or k is None:
                raise ValueError("the xnor unit needs alpha [Pw, N] and k")
            sa, sw = np.shape(a), np.shape(w)
            if len(sa) != 3 or len(sw) != 3:
                raise ValueError(f"xnor activations must be packed planes [Pa, M, words] and "
                                 f"weights [Pw, N, words]; got {sa} and {sw}")
            if sa[0] > self.a_planes or sw[0] > self.w_planes:
                raise ValueError(f"{sa[0]} activation / {sw[0]} weight planes exceed the "
                                 f"unit's {self.a_planes} / {self.w_planes}")
            a, w = as_int64("packed words", a)[None], as_int64("packed words", w)[None]
        alpha = as_int64("alpha", alpha)
        alpha = alpha if alpha.ndim == 3 else alpha[None]      # [wbatch, Pw, N]
        return Operands(a=a, w=w, m=a.shape[-2], n=w.shape[-2], k=k, batch=a.shape[0],
                        wbatch=w.shape[0], extra={"alpha": alpha, "k": k})

    def _chunks(self, k):
        return ceil_div(k, self.lanes)

    def beat_shape(self, ops):
        return (self._chunks(ops.k), ops.w.shape[1], ops.a.shape[1])

    def activation_fields(self, ops):
        starts = np.arange(self._chunks(ops.k)) * self.lanes
        win = bit_windows(ops.a, ops.k, starts, self.lanes)     # [B, Pa, M, chunk, pieces]
        pa = ops.a.shape[1]
        return {"a": Chunks(win.transpose(0, 2, 3, 1, 4)[:, :, :, None]),
                "plane": np.arange(pa).reshape(1, 1, pa)}

    def weight_fields(self, ops):
        w = ops.weights()
        chunks = self._chunks(ops.k)
        starts = np.arange(chunks) * self.lanes
        win = bit_windows(w, ops.k, starts, self.lanes)         # [B, Pw, N, chunk, pieces]
        alpha = ops.extra["alpha"]                               # [B, Pw, N]
        pw = w.shape[1]
        wplane = {"wplane": np.arange(pw).reshape(1, pw, 1)} if self.w_planes > 1 else {}
        return {"w": Chunks(win.transpose(0, 2, 3, 1, 4)[:, :, :, :, None]),
                "alpha": alpha.transpose(0, 2, 1)[:, :, None, :, None],
                **wplane,
                "count": np.minimum(self.lanes, ops.k - starts).reshape(chunks, 1, 1)}

    def macs(self, ops):
        return ops.m * ops.n * ops.k * ops.a.shape[1] * ops.w.shape[1]

    def tile_operands(self, beats):
        # Beat by beat: the beats name their activation and weight planes (their order is
        # free); a weight plane's alpha is the one of the tile's last beat of that plane.
        out = []
        a, w = self._pieces(beats["a"]), self._pieces(beats["w"])   # [beats, rows|cols, pieces]
        planes = beats["wplane"] if "wplane" in beats else np.zeros(len(beats["count"]), int)
        alpha = {int(p): beats["alpha"][i] for i, p in enumerate(planes)}
        for i, n in enumerate(beats["count"]):
            ops = Operands(a=a[i][None, None], w=w[i][None, None], m=a.shape[1], n=w.shape[1],
                           k=int(n), extra={"alpha": alpha[int(planes[i])][None, None],
                                            "k": int(n)})
            out.append((ops, int(beats["plane"][i])))
        return out

    def _pieces(self, lanes) -> np.ndarray:
        """Decoded lane fields (integers, or Chunks when wider than 64 bits) as packed 32-bit
        words ``[..., pieces]`` (int64)."""
        if isinstance(lanes, Chunks):
            return lanes.array.astype(np.int64)
        v = np.asarray(lanes).astype(np.uint64)
        return np.stack([(v >> np.uint64(32 * c)) & np.uint64(0xFFFFFFFF)
                         for c in range(ceil_div(self.lanes, 32))], axis=-1).astype(np.int64)

    def golden_arguments(self, ops, bias):
        return ((ops.a[0], ops.weights()[0], ops.extra["alpha"][0], int(ops.k), bias),
                {"max_k": self.max_k})

    operand_ndim = 3    # packed planes [P, rows, words], no batch

    @classmethod
    def call_operands(cls, call):
        return call["a_words"], call["w_words"], {"alpha": call["alpha"], "k": call["k"]}, \
            call["bias"]

    @classmethod
    def need_of_call(cls, call):
        return {"a_planes": call["a_words"].shape[0], "w_planes": call["w_words"].shape[0]}

    def random_operands(self, rng, m, k, n):
        return {"a": pack_bits(rng.integers(0, 2, (self.a_planes, m, k))),
                "w": pack_bits(rng.integers(0, 2, (self.w_planes, n, k))),
                "alpha": rng.integers(0, 1 << ALPHA_BITS, (self.w_planes, n), dtype=np.int64),
                "k": k}

    def extreme_operands(self, m, k, n):
        # all-ones activations against all-ones / all-zeros weights, alternately
        w = np.zeros((self.w_planes, n, k), np.int64)
        w[:, ::2] = 1
        return {"a": pack_bits(np.ones((self.a_planes, m, k))), "w": pack_bits(w),
                "alpha": np.full((self.w_planes, n), (1 << ALPHA_BITS) - 1, np.int64), "k": k}

    def special_cases(self, rng, kmax, m, n):
        ext = self.extreme_operands(m, kmax, n)
        ext["a"] = pack_bits(np.zeros((self.a_planes, m, kmax)))
        cases = [("widest_k_all_zeros_saturate",
                  {**ext, "mult": np.full(n, 65535, np.int64)})]
        # K around the lane count: partly filled last beats
        lanes = self.lanes
        for k in sorted({1, min(kmax, lanes - 1 or 1), min(kmax, lanes + 3),
                         min(kmax, 2 * lanes + 1)}):
            ops = self.random_operands(rng, m, k, n)
            cases.append((f"k{k}_round_half_up", {**ops, "shift": rng.integers(1, 4, n),
                                                  "mult": np.ones(n, np.int64)}))
        ops = self.random_operands(rng, m, min(kmax, lanes + 3), n)
        ops["alpha"] = np.full((self.w_planes, n), (1 << ALPHA_BITS) - 1, np.int64)
        cases.append(("saturate_relu_alpha_max", {**ops, "mult": np.full(n, 65535, np.int64),
                                                  "shift": np.zeros(n, np.int64),
                                                  "relu": True}))
        return cases
