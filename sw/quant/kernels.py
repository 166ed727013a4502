"""Where quantized matmuls meet the golden kernels -- and where another implementation plugs in.

Every integer matmul of a quantized model (in integer mode) goes through :func:`call`, which

* looks up the kernel by name (``"int_matmul"``, ``"log_matmul"``, ``"xnor_matmul"``: the golden
  kernels of the matmul unit kinds, :func:`matmul_kernels`): the golden kernel unless
  :func:`use_kernels` substituted another callable with the same signature (co-simulation runs
  the Verilated unit there and compares with the golden result);
* makes the calling site visible through :func:`current_site` while the kernel runs (the site
  names the module, the unit and its parameters, so a mismatch can be reported as "layer, shape,
  element");
* tells the observers registered with :func:`observe` (matmul counting, statistics).

While a kernel is the golden one and nothing observes the calls (:func:`fast`), the quantized
modules compute its integers with :class:`lowbit.sw.golden.PreparedMatmul` instead (weights
prepared once, no bit packing; docs/numerics.md says why the integers are the same); a
substituted kernel or an observer sees every call through :func:`call`, with the packed
operands, as described here. The environment variable ``LOWBIT_REFERENCE_KERNELS=1`` turns the
prepared path off in a whole process (every command decodes through the golden kernels
themselves), so that a decode can be compared with the reference path from the command line.

The integer-only model (:mod:`.integer`) runs every operation between its matmuls through
:func:`call_op` in the same way: the operations of :data:`OPS` (``requantize``, ``softmax``,
``residual_add``, ``layernorm``, ``embedding``, ``argmax``, and beam search's ``log_softmax``) are the golden functions of
:mod:`lowbit.sw.golden` / :mod:`lowbit.sw.golden_ops` unless :func:`use_kernels` substituted
them, with the calling :class:`OpSite` visible through :func:`current_site`.

Example (a co-simulation hook)::

    from lowbit.sw.quant import kernels

    def rtl_int_matmul(a, w, bias=None, **params):
        site = kernels.current_site()          # MatmulSite(name, unit, params)
        ...                                    # run the RTL, compare with golden.int_matmul
        return acc

    with kernels.use_kernels(int_matmul=rtl_int_matmul):
        translate(model, tokenizer, sentences)
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass, field

from lowbit import LowbitError
from lowbit.hw.units import resolve, unit_class, unit_kinds
from lowbit.sw import golden
from lowbit.sw import golden_ops

REFERENCE_ENV = "LOWBIT_REFERENCE_KERNELS"



def matmul_kernels() -> dict:
    """``{kernel name: golden kernel}`` (``"int_matmul": "lowbit.sw.golden:int_matmul"``) of every
    unit kind of the family ``"matmul"`` registered now (lowbit.hw.units), in registration
    order: the names a quantized model calls its matmuls by. A new matmul unit kind brings its
    kernel with its description."""
    out = {}
    for kind in unit_kinds("matmul"):
        target = unit_class(kind).golden
        out[target.rpartition(":")[2] if isinstance(target, str) else target.__name__] = target
    return out


UNIT_KERNEL = {"int": "int_matmul", "log": "log_matmul", "xnor": "xnor_matmul"}
# The integer-only model's operations between the matmuls: the module of each golden function
# (looked up by name at each call, as the kernels are)
OPS = {"requantize": golden, "softmax": golden_ops, "residual_add": golden_ops,
       "layernorm": golden_ops, "embedding": golden_ops, "argmax": golden_ops,
       "log_softmax": golden_ops}

_overrides: dict = {}
_site_stack: list = []
_observers: list = []


@dataclass(frozen=True)
class MatmulSite:
    """One quantized matmul of a model.

    Attributes
    ----------
    name : module path in the model, e.g. ``model.decoder.layers.0.self_attn.qk``.
    unit : ``"int"`` | ``"log"`` | ``"xnor"`` -- the hardware unit (and golden kernel) it needs.
    params : the unit's parameters for this matmul (``a_bits``/``w_bits`` for int, ``bits``/
        ``a_bits`` for log, ``a_planes``/``w_planes`` for xnor), as keyword arguments of the
        golden kernel where they are ones.
    """

    name: str
    unit: str
    params: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def kernel(self) -> str:
        return UNIT_KERNEL[self.unit]


@dataclass(frozen=True)
class OpSite:
    """One integer operation of the integer-only model.

    Attributes
    ----------
    name : where it runs, e.g. ``model.encoder.layers.0.self_attn.qk.softmax`` (the module path
        of the matmul it follows or feeds, and the operation's role).
    op : the operation, a key of :data:`OPS`.
    """

    name: str
    op: str


def kernel(name: str):
    """The callable currently used for kernel ``name`` (golden unless overridden)."""
    known = matmul_kernels()
    if name not in known:
        raise ValueError(f"unknown kernel {name!r}; kernels are {', '.join(known)}")
    return _overrides.get(name) or resolve(known[name])


def reference_forced() -> bool:
    """Whether ``LOWBIT_REFERENCE_KERNELS`` asks for the golden kernels at every call: ``1`` yes,
    ``0`` or unset no; any other value is a :class:`LowbitError`."""
    value = os.environ.get(REFERENCE_ENV, "")
    if value not in ("", "0", "1"):
        raise LowbitError(f"{REFERENCE_ENV} must be 0 or 1, not {value!r}")
    return value == "1"


def fast(name: str) -> bool:
    """Whether a caller may evaluate kernel ``name`` with a faster equivalent of the golden kernel
    (:class:`lowbit.sw.golden.PreparedMatmul`, same integers) instead of :func:`call`: the kernel
    is not substituted, nothing observes the calls, ``golden.integer_evaluation`` is off, and
    ``LOWBIT_REFERENCE_KERNELS=1`` (:func:`reference_forced`) is not set."""
    return (name not in _overrides and not _observers and not golden.evaluating_integers()
            and not reference_forced())


def call(name: str, site: MatmulSite, *args, **kwargs):
    """Run kernel ``name`` for ``site``: ``kernel(name)(*args, **kwargs)``, observed."""
    fn = kernel(name)
    _site_stack.append(site)
    try:
        result = fn(*args, **kwargs)
    finally:
        _site_stack.pop()
    for obs in _observers:
        obs(site, result)
    return result


def op(name: str):
    """The callable currently used for operation ``name`` of :data:`OPS` (golden unless
    overridden)."""
    if name not in OPS:
        raise ValueError(f"unknown operation {name!r}; operations are {', '.join(OPS)}")
    return _overrides.get(name) or getattr(OPS[name], name)


def call_op(name: str, where: str, *args, **kwargs):
    """Run operation ``name`` at the site named ``where`` (an :class:`OpSite`):
    ``op(name)(*args, **kwargs)``, not observed (the observers count matmuls)."""
    fn = op(name)
    _site_stack.append(OpSite(where, name))
    try:
        return fn(*args, **kwargs)
    finally:
        _site_stack.pop()


def current_site() -> MatmulSite | OpSite | None:
    """The site whose kernel call is running (None outside a call)."""
    return _site_stack[-1] if _site_stack else None


@contextlib.contextmanager
def use_kernels(**fns):
    """Substitute kernels or operations inside a ``with`` block: ``use_kernels(int_matmul=f,
    softmax=g, ...)``.

    Each substitute takes the golden function's arguments and must return its result.
    """
    known = tuple(matmul_kernels()) + tuple(OPS)
    unknown = sorted(set(fns) - set(known))
    if unknown:
        raise ValueError(f"unknown kernel(s) {', '.join(unknown)}; kernels are "
                         f"{', '.join(known)}")
    saved = dict(_overrides)
    _overrides.update({k: v for k, v in fns.items() if v is not None})
    try:
        yield
    finally:
        _overrides.clear()
        _overrides.update(saved)


@contextlib.contextmanager
def observe(fn):
    """Call ``fn(site, result)`` after every kernel call inside the ``with`` block."""
    _observers.append(fn)
    try:
        yield
    finally:
        _observers.remove(fn)


@contextlib.contextmanager
def count_calls():
    """Count kernel calls per site name inside the block; yields the :class:`Counter`."""
    counts: Counter = Counter()
    with observe(lambda site, _result: counts.update([site.name])):
        yield counts
