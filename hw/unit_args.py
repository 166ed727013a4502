"""The unit flags of every command that builds a matmul unit (``lowbit hw verilog``,
``lowbit fpga``, ``lowbit verify``), read from the unit descriptions (:mod:`lowbit.hw.units`):
one flag per parameter, plus the descriptions' flags that set several parameters at once.

``--bits`` means the same in every command: the width the unit takes (INT: activation and
weight bits; log: code bits; XNOR: activation and weight planes). A parameter's own flag
(``--a-bits``, ``--a-planes``, ...) wins over a flag that sets several.
"""

from __future__ import annotations

from lowbit import LowbitError

from .units import COLS, MAX_K, OUT_BITS, ROWS, ParameterError, unit_class, unit_kinds

__all__ = ["add_unit_flags", "unit_params"]

_SHOWN = ("rows", "cols", "out_bits")     # always in the parameters (defaults if not given)


def _flags(family: str | None = None) -> dict[str, list]:
    """flag -> [(kind, parameter names, Param or None, help)] over every registered kind (of
    ``family``), the flags of the matmul kinds first."""
    out: dict = {p.flag: [] for p in (ROWS, COLS, MAX_K, OUT_BITS)}
    for kind in unit_kinds(family):
        cls = unit_class(kind)
        for p in cls.all_parameters():
            out.setdefault(p.flag, []).append((kind, (p.name,), p, p.help))
        for f in cls.aliases:
            out.setdefault(f.flag, []).append((kind, f.params, None, f.help))
    return out


def _help(flag: str, uses: list, family: str | None) -> str:
    p = uses[0][2]
    if len({kind for kind, *_ in uses}) == len(unit_kinds(family)) and p is not None:
        return f"{p.help} ({p.range_text}, default {p.default})"
    texts: dict = {}
    for kind, _, param, text in uses:
        bounds = "" if param is None or param.is_bool else \
            f" ({param.range_text}, default {param.default})"
        texts.setdefault(text + bounds, []).append(kind)
    return "; ".join(f"{', '.join(kinds)}: {text}" for text, kinds in texts.items())


def add_unit_flags(p, family: str | None = None) -> None:
    """``--unit``, the array shape and every unit kind's flags (the kinds of ``family``, if
    given: ``"matmul"``, ``"vector"``), validated by :func:`unit_params`."""
    p.add_argument("--unit", required=True, help=", ".join(unit_kinds(family)))
    for flag, uses in _flags(family).items():
        if not uses:
            continue
        param = uses[0][2]
        dest = flag[2:].replace("-", "_")
        if param is not None and param.is_bool:
            p.add_argument(flag, dest=dest, action="store_true", default=None,
                           help=_help(flag, uses, family))
        else:
            p.add_argument(flag, dest=dest, type=int, help=_help(flag, uses, family))


def unit_params(args, family: str | None = None) -> tuple[str, dict]:
    """Validate the unit flags of parsed ``args`` into ``(unit, params)``.

    The unit's description checks the parameters; a :class:`ParameterError` names the
    parameter, and the message names the flag that set it.

    Raises :class:`LowbitError`, e.g. ``--rows must be a positive integer, not 0`` or
    ``--lanes applies to the xnor unit only, not int8``.
    """
    try:
        cls = unit_class(args.unit, family)
    except ValueError as e:
        raise LowbitError(str(e)) from None
    flags = _flags(family)
    own = {p.flag: (p.name,) for p in cls.all_parameters()}
    own.update({f.flag: f.params for f in cls.aliases if f.flag not in own})
    for flag, uses in flags.items():
        if getattr(args, flag[2:].replace("-", "_"), None) is not None and flag not in own:
            # the kinds of the unit's own family that take the flag, else every kind that does
            kinds = [kind for kind, *_ in uses]
            kinds = [k for k in kinds if unit_class(k).family == cls.family] or kinds
            plural = "s" if len(kinds) > 1 else ""
            raise LowbitError(f"{flag} applies to the {' and '.join(kinds)} unit{plural} only, "
                              f"not {cls.kind}")
    given, set_by = {}, {}
    for flag, names in own.items():     # a parameter's own flag first: it wins
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is None:
            continue
        for name in names:
            if name not in given:
                given[name], set_by[name] = value, flag
    # The array shape and output width always, the rest as given, in the unit's order.
    params = {name: given.get(name, p.default) for name, p in
              ((p.name, p) for p in cls.all_parameters()) if name in given or name in _SHOWN}
    params = {k: params[k] for k in (*_SHOWN, *params) if k in params}
    try:
        cls(**params)
    except ParameterError as e:
        flag = set_by.get(e.param, "--" + e.param.replace("_", "-"))
        # a flag that sets several parameters, and others for other units, says for which unit
        note = f" for {cls.kind}" if len(own[flag]) > 1 and \
            len({u[1] for u in flags[flag]}) > 1 else ""
        raise LowbitError(e.named(flag, note)) from None
    return cls.kind, params
