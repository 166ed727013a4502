"""The unit flags of every command that builds a matmul unit (``lowbit hw verilog``,
``lowbit fpga``, ``lowbit verify``): defined once here, validated into the unit's parameters."""

from __future__ import annotations

from lowbit import LowbitError

from .matmul import MAX_ARRAY, MAX_LANES, UNITS, check_int, check_size, make_unit

__all__ = ["add_unit_flags", "unit_params", "flag_message"]

# Unit-specific flags: (attribute, parameter name, units that take it).
_UNIT_FLAGS = {
    "a_bits": ("--a-bits", ("int8", "log")),
    "w_bits": ("--w-bits", ("int8",)),
    "bits": ("--bits", ("log",)),
    "zero_code": ("--zero-code", ("log",)),
    "planes": ("--planes", ("xnor",)),
    "a_planes": ("--a-planes", ("xnor",)),
    "w_planes": ("--w-planes", ("xnor",)),
    "lanes": ("--lanes", ("xnor",)),
}


def add_unit_flags(p) -> None:
    """``--unit``, the array shape and the unit flags, validated by :func:`unit_params`."""
    p.add_argument("--unit", required=True, help=f"{', '.join(UNITS)}")
    p.add_argument("--rows", type=int, default=4, help=f"PE array rows (1..{MAX_ARRAY}, default 4)")
    p.add_argument("--cols", type=int, default=4,
                   help=f"PE array columns (1..{MAX_ARRAY}, default 4)")
    for flag, kind, text in (
            ("--max-k", int, "largest K the accumulator is sized for (default 32768)"),
            ("--a-bits", int, "activation bits (int8, log: 2..8, default 8)"),
            ("--w-bits", int, "weight bits (int8: 2..8, default 8)"),
            ("--bits", int, "log code bits (log: 1..8, default 4)"),
            ("--planes", int, "activation and weight planes (xnor: 1..8)"),
            ("--a-planes", int, "activation planes (xnor: 1..8, default 1)"),
            ("--w-planes", int, "weight planes (xnor: 1..8, default 1)"),
            ("--lanes", int, "bits of K per beat (xnor: 1..256, default 32)")):
        p.add_argument(flag, type=kind, help=text)
    p.add_argument("--out-bits", type=int, default=8, help="requantized output width (2..32)")
    p.add_argument("--zero-code", action="store_true", default=None,
                   help="log codes with an exact zero (log, bits >= 2)")


def unit_params(args) -> tuple[str, dict]:
    """Validate the CLI flags of ``lowbit hw verilog`` into ``(unit, params)``.

    The parameters are checked by building the unit once (cross-parameter rules such as the
    accumulator width live in the constructors).

    Raises :class:`LowbitError` naming the flag, e.g. ``--rows must be a positive integer, not 0``.
    """
    unit = args.unit
    if not isinstance(unit, str) or unit not in UNITS:
        raise LowbitError(f"unknown unit {unit!r} (choose from {', '.join(UNITS)})")
    try:
        params = {"rows": check_size("--rows", args.rows, MAX_ARRAY),
                  "cols": check_size("--cols", args.cols, MAX_ARRAY),
                  "out_bits": check_int("--out-bits", args.out_bits, 2, 32)}
        if args.max_k is not None:
            params["max_k"] = check_int("--max-k", args.max_k, 1)
        for attr, (flag, units) in _UNIT_FLAGS.items():
            value = getattr(args, attr, None)
            if value is None or (attr == "zero_code" and value is False):   # not given
                continue
            if unit not in units:
                plural = "s" if len(units) > 1 else ""
                raise LowbitError(f"{flag} applies to the {' and '.join(units)} unit{plural} "
                                  f"only, not {unit}")
            if attr == "zero_code":     # a switch: argparse gives True or None
                if value is not True:
                    raise LowbitError(f"{flag} is a switch (true or absent), not {value!r}")
                params[attr] = True
            elif attr == "lanes":
                params[attr] = check_int(flag, value, 1, MAX_LANES)
            elif attr == "bits" or attr.endswith("planes"):
                params[attr] = check_int(flag, value, 1, 8)
            else:
                params[attr] = check_int(flag, value, 2, 8)
        planes = params.pop("planes", None)
        if planes is not None:      # --planes sets both; --a-planes / --w-planes win
            params.setdefault("a_planes", planes)
            params.setdefault("w_planes", planes)
        make_unit(unit, **params)._MustUse__silence = True   # cross-parameter checks only
    except (TypeError, ValueError) as e:
        raise LowbitError(flag_message(str(e))) from None
    return unit, params


def flag_message(message: str) -> str:
    """Turn a constructor message (``Max K ...``) into one naming the CLI flag."""
    for words, flag in (("Max K", "--max-k"), ("Zero code", "--zero-code"),
                        ("A bits", "--a-bits"), ("W bits", "--w-bits"), ("Bits", "--bits"),
                        ("A planes", "--a-planes"), ("W planes", "--w-planes"),
                        ("Lanes", "--lanes"), ("Rows", "--rows"), ("Cols", "--cols"),
                        ("Out bits", "--out-bits")):
        if message.startswith(words + " "):
            return flag + message[len(words):]
    return message
