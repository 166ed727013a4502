"""The widths, ranges and limits of docs/numerics.md, free of torch and amaranth.

Both implementations of the contract read them from here: the golden kernels
(:mod:`lowbit.sw.golden`, PyTorch) and the RTL (:mod:`lowbit.hw`, Amaranth), so generating
Verilog never imports torch and the two sides cannot disagree on a width.
"""

from __future__ import annotations

__all__ = ["MULT_BITS", "SHIFT_MAX", "ALPHA_BITS", "WORD_BITS", "LOG_MAX_DEPTH", "ACC_MAX_BITS",
           "DEFAULT_MAX_K", "EXACT_LIMIT", "int_range", "check_bits", "signed_width",
           "accumulator_width", "bias_bound", "int_max_product", "int_acc_width", "log_depth",
           "log_max_product", "log_acc_width", "xnor_max_product", "xnor_acc_width", "ceil_div",
           "LN_MAX_D", "LN_SQRT_SHIFT", "LN_RECIP_BITS", "LN_NORM_BITS", "LN_GAMMA_BITS",
           "LN_BETA_BITS", "LN_SHIFT_MAX", "LN_EPS_MAX", "EXP_INDEX_BITS", "EXP_ONE_BITS",
           "SOFTMAX_FRAC_BITS", "SOFTMAX_RECIP_BITS", "MAX_ROW", "EXP2_TABLE"]

# Widths and limits (docs/numerics.md, "Common rules")
MULT_BITS = 16          # requantization multiplier: unsigned, 0 .. 2**16 - 1
SHIFT_MAX = 63          # requantization shift: 0 .. 63 (6 bits)
ALPHA_BITS = 16         # binary-coding plane scale: unsigned, 0 .. 2**16 - 1
WORD_BITS = 32          # packed bit-plane word (host packing; the RTL takes any lane width)
LOG_MAX_DEPTH = 16      # log weights: at most 16 magnitudes 2**0 .. 2**-15 (see numerics.md)
ACC_MAX_BITS = 47       # widest accumulator any unit may have (requantization input)
DEFAULT_MAX_K = 32768   # largest K every unit accepts by default (INT8 accumulator fits int32)
EXACT_LIMIT = 2 ** 53   # float64 represents every integer below this exactly

# Integer-only decode, LayerNorm (docs/numerics.md, "LayerNorm"; golden_ops.layernorm)
LN_MAX_D = 1 << 12        # widest LayerNorm row (sum of squares < 2**44)
LN_SQRT_SHIFT = 18        # sigma = isqrt(V << 18) = floor(sqrt(V) * 2**9)
LN_RECIP_BITS = 40        # inv = floor(2**40 / sigma); |c * inv| < 2**32
LN_NORM_BITS = 31         # c * inv = (normalized value / sqrt(D)) * 2**31
LN_GAMMA_BITS = 16        # g: signed 16-bit
LN_BETA_BITS = 48         # b: signed 48-bit
LN_SHIFT_MAX = 47         # output shift S: 0..47
LN_EPS_MAX = 1 << 44      # integer epsilon: 0..2**44

# Integer-only decode, softmax (docs/numerics.md, "Softmax"; golden_ops.softmax)
EXP_INDEX_BITS = 8        # the exponential table has 2**8 entries (8 fraction bits of its input)
EXP_ONE_BITS = 15         # table entry for 2**0 is 2**15; entries are 2**14 < E[r] <= 2**15
SOFTMAX_FRAC_BITS = 8     # attention scores enter the softmax as log2-domain fixed point, 2**-8
SOFTMAX_RECIP_BITS = 31   # reciprocal R = floor((2**(ob-1) - 1) * 2**31 / S)
MAX_ROW = 1 << 16         # longest softmax / log-softmax row (S < 2**31)


def _exp2_table() -> tuple[int, ...]:
    """``E[r] = round(2**15 * 2**(-r/256))`` for r = 0..255, computed exactly.

    ``x = 2**(15 - r/256)`` satisfies ``x**256 = 2**(3840 - r)``, so integer powers decide both
    the floor of ``x`` and whether ``x`` lies above ``floor(x) + 1/2`` (it never lies on it:
    ``x`` is irrational for r > 0); no floating-point function enters the table.
    """
    out = []
    for r in range(1 << EXP_INDEX_BITS):
        target = 1 << (EXP_ONE_BITS * 256 - r)       # x**256
        n = int(2.0 ** (EXP_ONE_BITS - r / 256))     # estimate, corrected exactly below
        while n ** 256 > target:
            n -= 1
        while (n + 1) ** 256 <= target:
            n += 1
        if (2 * n + 1) ** 256 <= target << 256:      # x >= n + 1/2
            n += 1
        out.append(n)
    return tuple(out)


EXP2_TABLE = _exp2_table()


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for integers, ``b > 0``."""
    return -(-a // b)


def int_range(bits: int) -> tuple[int, int]:
    """Range of a ``bits``-wide two's complement integer: ``(-2**(bits-1), 2**(bits-1) - 1)``."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def check_bits(name: str, bits: int, lo: int, hi: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not lo <= bits <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {bits!r}")


def signed_width(magnitude: int) -> int:
    """Smallest two's complement width that holds every integer in ``[-magnitude, magnitude]``."""
    return max(int(magnitude).bit_length() + 1, 2)


def accumulator_width(max_product: int, max_k: int) -> int:
    """Accumulator width of a unit: holds ``sum of max_k products + bias`` without overflow.

    The bias is bounded like the sum (``|bias| <= max_k * max_product``), so
    ``|acc + bias| <= 2 * max_k * max_product`` and the width is that magnitude's signed width.
    """
    return signed_width(2 * max_k * max_product)


def bias_bound(max_product: int, max_k: int) -> int:
    """Largest ``|bias|`` a unit accepts: the same bound as the sum of products."""
    return max_k * max_product


def int_max_product(a_bits: int, w_bits: int) -> int:
    """Largest ``|a * w|``: ``(-2**(a_bits-1)) * (-2**(w_bits-1))``."""
    return 1 << (a_bits + w_bits - 2)


def int_acc_width(a_bits: int = 8, w_bits: int = 8, max_k: int = DEFAULT_MAX_K) -> int:
    return accumulator_width(int_max_product(a_bits, w_bits), max_k)


def log_depth(bits: int, zero_code: bool = False) -> int:
    """Number of distinct non-zero magnitudes of ``bits``-bit log codes.

    Aji & Heafield: 1 sign bit + (bits-1) exponent bits, magnitudes ``2**0 .. 2**-(2**(bits-1)-1)``
    relative to the scale, no zero. We cap the depth at 16 magnitudes (exponents down to 2**-15)
    so the shifter and accumulator stay bounded; with ``zero_code`` the deepest exponent index
    encodes an exact 0 instead of a magnitude.
    """
    check_bits("bits", bits, 1, 8)
    if zero_code and bits < 2:
        raise ValueError("a zero code needs at least 2 bits (1-bit log codes are sign-only)")
    depth = min(1 << (bits - 1), LOG_MAX_DEPTH)
    return depth - 1 if zero_code else depth


def log_max_product(a_bits: int, bits: int, zero_code: bool = False) -> int:
    return (1 << (a_bits - 1)) << (log_depth(bits, zero_code) - 1)


def log_acc_width(bits: int, a_bits: int = 8, max_k: int = DEFAULT_MAX_K,
                  zero_code: bool = False) -> int:
    return accumulator_width(log_max_product(a_bits, bits, zero_code), max_k)


def xnor_max_product(a_planes: int, w_planes: int) -> int:
    """Largest ``|a * w|`` per element: ``(2**Pa - 1) * Pw * (2**ALPHA_BITS - 1)``."""
    return ((1 << a_planes) - 1) * w_planes * ((1 << ALPHA_BITS) - 1)


def xnor_acc_width(a_planes: int = 1, w_planes: int = 1, max_k: int = DEFAULT_MAX_K) -> int:
    return accumulator_width(xnor_max_product(a_planes, w_planes), max_k)
