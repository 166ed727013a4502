# amaranth: UnusedElaboratable=no
"""A new unit kind is its own code plus one registration line (docs/architecture.md).

This file defines a ternary matmul unit that lowbit does not ship -- weights in {-1, 0, +1}
coded in 2 bits, so a PE is a conditional negate, no multiplier -- with everything a unit kind
has: its golden kernel, its processing elements, its RTL class and its description. It
registers the description with one call and nothing else in the code base is edited. The unit
then runs through the same paths as the shipped ones: the host driver and the Amaranth
simulator, the compiled Verilator harness with the shared corner cases, ``lowbit verify``,
``lowbit hw verilog`` with Verilator's lint, and the accelerator top's identification
registers. The golden kernel is the reference, compared by equality, and is itself checked
against a plain numpy matrix product.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from amaranth.hdl import Cat, Mux, Signal, signed, unsigned
from amaranth.lib import data

from lowbit.cli import main
from lowbit.contract import DEFAULT_MAX_K, bias_bound, int_range, signed_width
from lowbit.hw.accel import Accelerator, decode_id
from lowbit.hw.driver import Protocol
from lowbit.hw.matmul import MatmulUnit, ProcessingElements, make_unit
from lowbit.hw.simulate import simulate
from lowbit.hw.units import (MatrixUnitDescription, Param, describe, register_unit,
                             unit_kinds, unregister_unit)
from lowbit.sim.operands import corner_cases, random_operands
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.timeout(900)

# Codes: 0 -> 0, 1 -> +1, 3 -> -1 (two's complement); 2 is not a weight.
CODE_VALUES = {0: 0, 1: 1, 3: -1}


# --- the golden kernel (PyTorch, exact) ------------------------------------------------------

def ternary_matmul(a, codes, bias=None, *, a_bits=8, max_k=DEFAULT_MAX_K):
    """``acc[m, n] = sum_k a[m, k] * t[n, k] + bias[n]`` with ``t`` the ternary weights of
    ``codes``; a is signed ``a_bits``; raises ValueError for a code 2 or out-of-range input."""
    lo, hi = int_range(a_bits)
    if a.numel() and (a.min() < lo or a.max() > hi):
        raise ValueError(f"activations has values outside {lo}..{hi}")
    if codes.numel() and ((codes < 0) | (codes > 3) | (codes == 2)).any():
        raise ValueError("codes must be 0, 1 or 3")
    if not 1 <= a.shape[-1] <= max_k:
        raise ValueError(f"K must be in 1..{max_k}, not {a.shape[-1]}")
    t = torch.where(codes == 3, -1, codes)
    acc = a.to(torch.int64) @ t.to(torch.int64).T
    if bias is not None:
        bound = bias_bound(1 << (a_bits - 1), max_k)
        if bias.numel() and bias.abs().max() > bound:
            raise ValueError(f"bias has values outside -{bound}..{bound}")
        acc = acc + bias
    return acc


# --- the processing elements and the RTL -----------------------------------------------------

class TernaryPE(ProcessingElements):
    """``+a``, ``-a`` or 0 per PE: a conditional negate, registered once."""
    latency = 1

    def __init__(self, a_bits: int):
        self.product_shape = signed(signed_width(1 << (a_bits - 1)))

    def elaborate(self, m, en, beat, rows, cols):
        prods = []
        for r in range(rows):
            row = []
            for c in range(cols):
                code, a = beat.w[c], beat.a[r]
                p = Signal(self.product_shape, name=f"prod_{r}_{c}")
                with m.If(en):
                    m.d.sync += p.eq(Mux(code == 1, a, Mux(code == 3, -a, 0)))
                row.append(p)
            prods.append(row)
        return prods

    def bad_beat(self, beat, rows, cols):
        return Cat(beat.w[c] == 2 for c in range(cols)).any()


class TernaryMatmul(MatmulUnit):
    def __init__(self, *, src_loc_at=0, **params):
        d = TernaryDescription(**params)
        super().__init__(d, TernaryPE(d.a_bits))


# --- the description -----------------------------------------------------------------------------

class TernaryDescription(MatrixUnitDescription):
    """Ternary weights (2-bit codes), signed ``a_bits`` activations."""
    kind, kind_code = "ternary", 15
    golden = ternary_matmul
    rtl = TernaryMatmul
    w_name = "codes"
    parameters = (Param("a_bits", "A bits", 8, 2, 8, help="activation bits"),)
    need = {"a_bits": "max"}
    bits_param, series = "a_bits", "ternary"

    @property
    def max_product(self):
        return 1 << (self.a_bits - 1)

    def beat_fields(self):
        return {"a": data.ArrayLayout(signed(self.a_bits), self.rows),
                "w": data.ArrayLayout(unsigned(2), self.cols)}

    def id_operands(self):
        return {"A": self.a_bits, "W": 2}

    @classmethod
    def params_from_id(cls, f):
        return {"a_bits": f["A"]}

    def params_text(self):
        return f"a{self.a_bits} ternary"

    def precision_text(self):
        return f"ternary, a{self.a_bits}"

    def random_operands(self, rng, m, k, n):
        lo, hi = int_range(self.a_bits)
        return {"a": rng.integers(lo, hi + 1, (m, k)),
                "w": rng.choice(np.array(list(CODE_VALUES)), (n, k))}

    def extreme_operands(self, m, k, n):
        w = np.full((n, k), 3, np.int64)        # -1 * -2^(a-1): the largest product
        w[1::2] = 1
        return {"a": np.full((m, k), int_range(self.a_bits)[0], np.int64), "w": w}


@pytest.fixture(autouse=True)
def ternary_registered():
    register_unit(TernaryDescription)          # the one registration line
    yield
    unregister_unit("ternary")                 # the other tests see the shipped kinds only


def numpy_raw(a, codes, bias):
    """The plain numpy reference: ``a @ t.T + bias`` with the ternary values of ``codes``."""
    t = np.vectorize(CODE_VALUES.get)(codes)
    return a @ t.T + bias


# --- the tests -------------------------------------------------------------------------------------

def test_registered_like_a_shipped_kind():
    assert unit_kinds()[-1] == "ternary"
    d = describe("ternary", rows=3, cols=2, a_bits=6)
    assert d.x_layout.size == 3 * 6 + 2 * 2 + 1
    assert d.acc_width == signed_width(2 * DEFAULT_MAX_K * 32)
    assert isinstance(make_unit("ternary", rows=3, cols=2), TernaryMatmul)
    with pytest.raises(ValueError, match="^A bits must be an integer in 2..8, not 9$"):
        describe("ternary", a_bits=9)


def test_the_fpga_bench_refuses_a_bare_pe_the_kind_does_not_have():
    """The bare reference PE comes from the kind's processing elements: a kind without a bare
    form, and a kind that is no matmul unit, are refused with one message each."""
    from lowbit import LowbitError
    from lowbit.hw.fpga_bare import BarePE

    with pytest.raises(LowbitError, match="^--design bare: unit ternary has no bare reference"):
        BarePE("ternary")
    with pytest.raises(LowbitError, match="^--design bare takes a matmul unit kind .*ternary.*, "
                                          "not softmax$"):
        BarePE("softmax")


def test_golden_kernel_against_numpy():
    rng = np.random.default_rng(1)
    d = describe("ternary", rows=2, cols=2)
    kw = d.random_operands(rng, 5, 33, 4)
    bias = rng.integers(-100, 100, 4)
    got = ternary_matmul(torch.tensor(kw["a"]), torch.tensor(kw["w"]), torch.tensor(bias))
    assert np.array_equal(got.numpy(), numpy_raw(kw["a"], kw["w"], bias))


@pytest.mark.parametrize("x_valid, y_ready", [(1.0, 1.0), (0.6, 0.5)])
def test_driver_and_amaranth_simulation(x_valid, y_ready):
    rng = np.random.default_rng(2)
    unit = make_unit("ternary", rows=2, cols=3, a_bits=5, out_bits=6)
    proto = Protocol(unit)
    for raw in (True, False):
        kw = random_operands(unit.description, rng, 5, 9, 4, raw=raw)
        plan = proto.plan(**kw)
        result = simulate(unit, plan, x_valid=x_valid, y_ready=y_ready, seed=3)
        got = proto.assemble(plan, result.y)
        assert np.array_equal(got, proto.expected(**kw))
        if raw:
            assert np.array_equal(got, numpy_raw(kw["a"], kw["w"], kw["bias"]))


def test_verilated_harness_random_and_corner_cases():
    from lowbit.sim.harness import VerilatedUnit

    rng = np.random.default_rng(3)
    with VerilatedUnit("ternary", rows=3, cols=2, max_k=300) as rtl:
        cases = [("random", random_operands(rtl.hw, rng, 7, 300, 5)),
                 ("random raw", random_operands(rtl.hw, rng, 4, 17, 3, raw=True))]
        cases += corner_cases(rtl.hw, rng)
        for name, kw in cases:
            res = rtl.matmul(**kw, gaps=0.2, stalls=0.3, seed=1)
            assert np.array_equal(res.y, rtl.expected(**kw)), name
            if kw.get("raw"):
                assert np.array_equal(res.y, numpy_raw(kw["a"], kw["w"], kw["bias"])), name


def test_the_cli_takes_the_new_kind(tmp_path, capsys):
    assert main(["verify", "--unit", "ternary", "--a-bits", "4", "--m", "6", "--k", "40",
                 "--n", "5", "--rows", "3", "--cols", "2", "--seed", "4"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "bit-exact: 30/30"
    out = tmp_path / "t.v"
    assert main(["hw", "verilog", "--unit", "ternary", "--rows", "2", "--cols", "2", "--lint",
                 "-o", str(out)]) == 0
    assert "module ternary_matmul(" in out.read_text()
    assert "lint clean" in capsys.readouterr().out
    assert main(["hw", "verilog", "--unit", "ternary", "--lanes", "8", "-o", str(out)]) == 2
    assert "--lanes applies to the xnor unit only, not ternary" in capsys.readouterr().err


def test_accelerator_identifies_the_new_kind():
    accel = Accelerator(unit="ternary", rows=2, cols=5, a_bits=3, max_k=1000)
    found = decode_id(accel.id_values)
    assert found["unit"] == "ternary"
    assert found["params"] == describe("ternary", rows=2, cols=5, a_bits=3, max_k=1000).params


def test_model_kernels_are_the_golden_kernels_of_the_matmul_kinds():
    """A quantized model calls its matmuls by the golden kernel names of the registered matmul
    unit kinds (sw/quant/kernels.py lists none of its own): the ternary kind registered by this
    file's fixture brings its kernel, and the vector kinds' golden operations are not matmuls."""
    from lowbit.hw.units import unregister_unit
    from lowbit.sw import golden
    from lowbit.sw.quant import kernels

    names = ("int_matmul", "log_matmul", "xnor_matmul")
    assert tuple(kernels.matmul_kernels()) == names + ("ternary_matmul",)
    for name in names:
        assert kernels.kernel(name) is getattr(golden, name)
    assert kernels.kernel("ternary_matmul") is ternary_matmul
    with kernels.use_kernels(ternary_matmul=np.matmul):
        assert kernels.kernel("ternary_matmul") is np.matmul
    with pytest.raises(ValueError, match="unknown kernel 'softmax'"):
        kernels.kernel("softmax")
    unregister_unit("ternary")
    assert tuple(kernels.matmul_kernels()) == names
    with pytest.raises(ValueError, match="unknown kernel 'ternary_matmul'"):
        kernels.kernel("ternary_matmul")
