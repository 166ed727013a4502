# amaranth: UnusedElaboratable=no
"""Property-based fuzzing of the matmul units' parameter validation (hypothesis, fixed seed).

Every parameter of ``make_unit`` and every flag of ``lowbit hw verilog`` / ``lowbit verify``
gets arbitrary values: integers (negative, zero, boundaries, huge), bools, floats (nan, inf),
None, strings, lists. The property, against an independent model of the documented rules
(docs/hardware.md, "Constructor parameters"):

* constructors: the unit is built exactly when every parameter is valid, and then its widths
  are the documented ones (the accumulator is the narrowest two's complement width holding
  ``2 * max_k * Pmax``, with ``Pmax`` derived here from the operand ranges; the payload widths
  follow the layout formulas); otherwise a ``TypeError`` (wrong type, unknown keyword) or
  ``ValueError`` (out of range) whose message starts with the name of an invalid parameter;
* command-line validation: the parameters returned are exactly what the flags say, with the
  documented precedence (``--a-planes`` / ``--w-planes`` over ``--planes`` over ``--bits`` for
  XNOR; ``--a-bits`` / ``--w-bits`` over ``--bits`` for INT), or a :class:`LowbitError` naming
  an invalid flag;
* never another exception, and never a hang: sizes are bounded before anything is built.
"""

from __future__ import annotations

import re
from argparse import Namespace

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lowbit import LowbitError
from lowbit.hw.matmul import make_unit

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                phases=(Phase.explicit, Phase.generate),
                suppress_health_check=[HealthCheck.too_slow])

UNITS = ("int8", "log", "xnor")
ACC_MAX_BITS = 47
ALPHA_MAX = (1 << 16) - 1
BOOL = "bool"

# name -> (label in messages, lo, hi or None, default); lo BOOL: a bool. docs/hardware.md.
COMMON = {"rows": ("Rows", 1, 64, 4), "cols": ("Cols", 1, 64, 4),
          "max_k": ("Max K", 1, None, 32768), "out_bits": ("Out bits", 2, 32, 8)}
OWN = {"int8": {"a_bits": ("A bits", 2, 8, 8), "w_bits": ("W bits", 2, 8, 8)},
       "log": {"bits": ("Bits", 1, 8, 4), "a_bits": ("A bits", 2, 8, 8),
               "zero_code": ("Zero code", BOOL, None, False)},
       "xnor": {"a_planes": ("A planes", 1, 8, 1), "w_planes": ("W planes", 1, 8, 1),
                "lanes": ("Lanes", 1, 256, 32)}}
ALL_PARAMS = {**COMMON, **OWN["int8"], **OWN["log"], **OWN["xnor"]}


def spec(unit: str) -> dict:
    return {**COMMON, **OWN[unit]}


JUNK = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=6), st.lists(st.integers(), max_size=2),
                 st.integers(-2 ** 80, 2 ** 80), st.sampled_from([-1, 0, 2 ** 63, 10 ** 30]))


def values(name: str):
    """Valid values, boundary values and junk, for parameter ``name``."""
    _, lo, hi, _ = ALL_PARAMS[name]
    if lo == BOOL:
        return st.one_of(st.booleans(), JUNK)
    if hi is None:      # max_k: both sides of the accumulator limit
        valid = st.one_of(st.integers(1, 1 << 40), st.sampled_from([1 << e for e in range(64)]))
    else:
        valid = st.integers(lo, hi)
    edges = st.sampled_from([lo - 1, lo, hi if hi is not None else lo, (hi or lo) + 1])
    return st.one_of(valid, valid, edges, JUNK)


def problem(name: str, value) -> str | None:
    """``"type"``, ``"value"`` or None: what the documented rules say of ``value``."""
    _, lo, hi, _ = ALL_PARAMS[name]
    if lo == BOOL:
        return None if isinstance(value, bool) else "type"
    if not isinstance(value, int) or isinstance(value, bool):
        return "type"
    return None if lo <= value and (hi is None or value <= hi) else "value"


def max_product(unit: str, p: dict) -> int:
    """Largest ``|product|`` of one K element, from the operand ranges of docs/numerics.md."""
    if unit == "int8":      # signed a_bits x signed w_bits: the two most negative values
        return (1 << (p["a_bits"] - 1)) * (1 << (p["w_bits"] - 1))
    if unit == "log":       # |a| <= 2^(a_bits-1), shifted by at most depth - 1
        depth = min(1 << (p["bits"] - 1), 16) - (1 if p["zero_code"] else 0)
        return (1 << (p["a_bits"] - 1)) << (depth - 1)
    # XNOR: activation planes sum to at most 2^Pa - 1, weight planes to Pw * alpha_max
    return ((1 << p["a_planes"]) - 1) * p["w_planes"] * ALPHA_MAX


def acc_width(unit: str, p: dict) -> int:
    """Narrowest two's complement width holding +-2 * max_k * Pmax (sums of max_k products
    plus a bias bounded like them)."""
    need, width = 2 * p["max_k"] * max_product(unit, p), 2
    while (1 << (width - 1)) - 1 < need:
        width += 1
    return width


def unit_problems(unit: str, params: dict) -> dict:
    """``{parameter: "type" | "value"}`` for everything wrong with ``make_unit(unit, **params)``
    (cross-parameter rules only once every parameter is valid on its own)."""
    bad = {}
    for name, value in params.items():
        if name not in spec(unit):
            bad[name] = "type"          # a keyword the unit does not take
        elif problem(name, value):
            bad[name] = problem(name, value)
    if not bad:
        p = {name: d for name, (_, _, _, d) in spec(unit).items()} | params
        if unit == "log" and p["zero_code"] and p["bits"] < 2:
            bad["zero_code"] = "value"
        elif acc_width(unit, p) > ACC_MAX_BITS:
            bad["max_k"] = "value"
    return bad


def x_width(unit: str, p: dict) -> int:
    if unit == "int8":
        return p["rows"] * p["a_bits"] + p["cols"] * p["w_bits"] + 1
    if unit == "log":
        return p["rows"] * p["a_bits"] + p["cols"] * p["bits"] + 1
    lanes = p["lanes"]
    wplane = (p["w_planes"] - 1).bit_length()     # the weight plane field, absent with one
    return (p["rows"] * lanes + p["cols"] * lanes + p["cols"] * 16 + 3 + wplane
            + lanes.bit_length() + 1)


# ---------------------------------------------------------------------------------------------
# Constructors


@FUZZ
@given(unit=st.sampled_from(UNITS), data=st.data())
def test_unit_constructors(unit, data):
    params = {}
    for name in ALL_PARAMS:
        own = name in spec(unit)
        if data.draw(st.booleans() if own else st.sampled_from([False] * 9 + [True]), label=name):
            params[name] = data.draw(values(name), label=f"{name} value")
    if data.draw(st.sampled_from([False] * 19 + [True]), label="unknown keyword"):
        params["depth"] = 3
    bad = unit_problems(unit, params)
    try:
        u = make_unit(unit, **params)
    except (TypeError, ValueError) as e:
        msg = str(e)
        assert bad, f"valid parameters {params} refused: {msg}"
        named = [n for n in bad if msg.startswith(ALL_PARAMS.get(n, (n,))[0] + " ")
                 or f"'{n}'" in msg]
        assert named, f"{msg!r} names none of the invalid parameters {sorted(bad)}"
        kind = "type" if isinstance(e, TypeError) else "value"
        assert any(bad[n] == kind for n in named), (msg, bad)
        assert "\n" not in msg
        return
    assert not bad, f"{unit} built with invalid parameters {bad}: {params}"
    p = {name: d for name, (_, _, _, d) in spec(unit).items()} | params
    assert u.params == p
    assert (u.rows, u.cols, u.max_k, u.out_bits) == (p["rows"], p["cols"], p["max_k"],
                                                     p["out_bits"])
    width = acc_width(unit, p)
    assert u.acc_width == width <= ACC_MAX_BITS
    assert u.y_width == max(width, p["out_bits"])
    assert u.x_layout.size == x_width(unit, p)
    assert u.cfg_layout.size == p["cols"] * (width + 16 + 6) + 2
    assert u.y_layout.size == p["cols"] * u.y_width + 1
    assert u.accumulate_latency == {"int8": 3, "log": 2, "xnor": 3}[unit]
    assert u.drain_latency == {"int8": 8, "log": 9, "xnor": 11}[unit]


def test_accumulator_width_corners():
    """The documented examples (docs/hardware.md): INT8 at max_k 32768 is 32 bits, 4-bit log
    codes 32, 5..8-bit codes 40, XNOR 1x1 planes 33, 8x8 planes 44; the largest max_k that
    fits 47 bits is accepted and the next refused."""
    assert make_unit("int8").acc_width == 32
    assert make_unit("log", bits=4).acc_width == 32
    assert {make_unit("log", bits=b).acc_width for b in range(5, 9)} == {40}
    assert make_unit("xnor").acc_width == 33
    assert make_unit("xnor", a_planes=8, w_planes=8).acc_width == 44
    for unit, extra in (("int8", {}), ("log", {"bits": 8}), ("xnor", {"a_planes": 8,
                                                                      "w_planes": 8})):
        p = {name: d for name, (_, _, _, d) in spec(unit).items()} | extra
        pmax = max_product(unit, p)
        top = ((1 << (ACC_MAX_BITS - 1)) - 1) // (2 * pmax)     # largest max_k in 47 bits
        assert make_unit(unit, max_k=top, **extra).acc_width == ACC_MAX_BITS
        with pytest.raises(ValueError, match=f"^Max K {top + 1} needs a 48-bit accumulator"):
            make_unit(unit, max_k=top + 1, **extra)


# ---------------------------------------------------------------------------------------------
# Command-line validation: lowbit hw verilog (unit_params) and lowbit verify (verify_params)


FLAGS = {name: "--" + name.replace("_", "-") for name in ALL_PARAMS}
FLAGS["planes"] = "--planes"
TAKES = {"int8": {"a_bits", "w_bits"}, "log": {"bits", "a_bits", "zero_code"},
         "xnor": {"planes", "a_planes", "w_planes", "lanes"}}
FLAG_RANGE = {"planes": (1, 8)}


def draw_unit_flags(data, unit) -> dict:
    """Flag attributes as argparse leaves them (absent: the flag's default), some arbitrary."""
    args = {"unit": unit}
    for name, default in (("rows", 4), ("cols", 4), ("out_bits", 8)):
        args[name] = data.draw(st.one_of(st.just(default), values(name)), label=name)
    for name in ("max_k", "a_bits", "w_bits", "bits", "a_planes", "w_planes", "lanes",
                 "zero_code", "planes"):
        given_ = data.draw(st.sampled_from([False, False, True]), label=f"{name} given")
        strategy = values(name) if name != "planes" else values("a_planes")
        args[name] = data.draw(strategy, label=name) if given_ else None
    return args


def flag_problem(name: str, value) -> bool:
    if name == "zero_code":
        return value is not None and not isinstance(value, bool)
    lo, hi = FLAG_RANGE[name] if name in FLAG_RANGE else ALL_PARAMS[name][1:3]
    return (not isinstance(value, int) or isinstance(value, bool) or value < lo
            or (hi is not None and value > hi))


def expected_unit_params(args: dict) -> tuple[dict, set]:
    """``(params, invalid flags)`` of ``lowbit hw verilog``'s rules for the flags ``args``."""
    unit, bad = args["unit"], set()
    if not isinstance(unit, str) or unit not in UNITS:
        return {}, {"--unit"}
    params = {}
    for name in ("rows", "cols", "out_bits", "max_k", "a_bits", "w_bits", "bits", "zero_code",
                 "planes", "a_planes", "w_planes", "lanes"):
        value = args[name]
        if name not in ("rows", "cols", "out_bits") and (      # these have defaults, never None
                value is None or (name == "zero_code" and value is False)):
            continue                                            # not given
        if name not in COMMON and name not in TAKES[unit]:
            bad.add(FLAGS[name])
        elif flag_problem(name, value):
            bad.add(FLAGS[name])
        else:
            params[name] = value
    if bad:
        return {}, bad
    planes = params.pop("planes", None)
    if planes is not None:
        params.setdefault("a_planes", planes)
        params.setdefault("w_planes", planes)
    problems = unit_problems(unit, params)
    return params, {FLAGS[n] for n in problems}


def names_flag(msg: str, flags: set) -> bool:
    """Whether ``msg`` names one of ``flags`` (whole flags: ``--m`` is not ``--max-k``)."""
    if "--unit" in flags and "unit" in msg:
        return True
    return any(re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", msg) for f in flags)


@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_hw_verilog_flags(data):
    from lowbit.hw.unit_args import unit_params

    unit = data.draw(st.one_of(st.sampled_from(UNITS), JUNK), label="unit")
    args = draw_unit_flags(data, unit)
    check_cli(unit_params, args, *expected_unit_params(args))


def check_cli(validate, args: dict, want: dict, bad: set) -> None:
    """The property for a command's flag validation ``validate(Namespace)``."""
    try:
        got_unit, params = validate(Namespace(**args))
    except LowbitError as e:
        assert bad, f"valid flags {args} refused: {e}"
        assert names_flag(str(e), bad), f"{str(e)!r} names none of {sorted(bad)}"
        return
    assert not bad, f"invalid flags {sorted(bad)} accepted: {args}"
    assert (got_unit, params) == (args["unit"], want)
    make_unit(got_unit, **params)


@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_verify_flags(data):
    from lowbit.sim.cli import verify_params

    unit = data.draw(st.one_of(st.sampled_from(UNITS), st.sampled_from(UNITS), JUNK), label="unit")
    args = draw_unit_flags(data, unit)
    for name in ("m", "k", "n"):
        args[name] = data.draw(st.one_of(st.integers(1, 64), st.integers(-2, 1 << 30), JUNK),
                               label=name)
    args["seed"] = data.draw(st.one_of(st.just(0), st.integers(-3, 1 << 70), JUNK), label="seed")
    args["backpressure"] = data.draw(st.one_of(st.just(0.0), st.floats(-1, 2), JUNK),
                                     label="backpressure")
    args["relu"] = data.draw(st.one_of(st.just(False), st.booleans(), JUNK), label="relu")
    args["raw"] = data.draw(st.one_of(st.just(False), st.booleans(), JUNK), label="raw")
    check_cli(verify_params, args, *expected_verify_params(dict(args)))


def expected_verify_params(args: dict) -> tuple[dict, set]:
    """``lowbit verify``'s rules: the operand flags, then ``--bits`` as the width the unit
    takes (INT: both widths unless ``--a-bits`` / ``--w-bits`` are given; XNOR: ``--planes``
    unless given; log: the code width), then ``lowbit hw verilog``'s."""
    bad = set()
    for name in ("m", "k", "n"):
        v = args[name]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            bad.add(f"--{name}")
    if not bad:
        for a, b in (("m", "k"), ("n", "k"), ("m", "n")):
            if args[a] * args[b] > 1 << 24:
                bad |= {f"--{a}", f"--{b}"}
    seed = args["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        bad.add("--seed")
    bp = args["backpressure"]
    if isinstance(bp, bool) or not isinstance(bp, (int, float)) or not 0 <= bp <= 0.9:
        bad.add("--backpressure")
    for name in ("relu", "raw"):
        if not isinstance(args[name], bool):
            bad.add(f"--{name}")
    if not bad and args["relu"] and args["raw"]:
        bad |= {"--relu", "--raw"}
    if bad:
        return {}, bad
    bits, unit = args["bits"], args["unit"]
    if bits is not None and unit in ("int8", "xnor"):
        lo = 2 if unit == "int8" else 1
        if not isinstance(bits, int) or isinstance(bits, bool) or not lo <= bits <= 8:
            return {}, {"--bits"}
        if unit == "int8":
            for name in ("a_bits", "w_bits"):
                args[name] = bits if args[name] is None else args[name]
        else:
            args["planes"] = bits if args["planes"] is None else args["planes"]
        args["bits"] = None
    return expected_unit_params(args)


@pytest.mark.parametrize("flags, want", [
    ({"unit": "xnor", "bits": 2}, {"a_planes": 2, "w_planes": 2}),
    ({"unit": "xnor", "bits": 2, "planes": 3}, {"a_planes": 3, "w_planes": 3}),
    ({"unit": "xnor", "bits": 2, "planes": 3, "w_planes": 5}, {"a_planes": 3, "w_planes": 5}),
    ({"unit": "int8", "bits": 4}, {"a_bits": 4, "w_bits": 4}),
    ({"unit": "int8", "bits": 4, "a_bits": 8}, {"a_bits": 8, "w_bits": 4}),
    ({"unit": "log", "bits": 3}, {"bits": 3}),
])
def test_verify_bits_precedence(flags, want):
    """docs/hardware.md: for XNOR ``--planes`` wins over ``--bits`` (and ``--a-planes`` /
    ``--w-planes`` over both); for INT ``--a-bits`` / ``--w-bits`` over ``--bits``."""
    from lowbit.sim.cli import verify_params

    args = {name: None for name in ("max_k", "a_bits", "w_bits", "bits", "a_planes",
                                    "w_planes", "lanes", "zero_code", "planes")}
    args.update(rows=4, cols=4, out_bits=8, m=4, k=8, n=4, seed=0, backpressure=0.0,
                relu=False, raw=False, **flags)
    _, params = verify_params(Namespace(**args))
    assert {k: v for k, v in params.items() if k not in ("rows", "cols", "out_bits")} == want
