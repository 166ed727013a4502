"""The cost model fitted to the FPGA bench's builds (:mod:`lowbit.hw.fpga_bench`).

A linear model per resource (:func:`fit_array_model`), fitted to each unit's builds at several
array shapes, gives what one more PE costs and the largest array that fits each board
(:func:`fit_largest`, :func:`largest_table`). Cost per MAC is reported two ways (docs/fpga.md):
the whole unit's LUTs per MAC at each size built (dominated by the fixed per-column
requantization and control in small arrays) and the marginal cost, the fitted per-PE slope
divided by the MACs one PE does per cycle (:func:`unit_cost`); :func:`comparisons` and
:func:`bare_comparisons` set the units against INT8 and against their bare PEs. Reads records;
builds and writes nothing.
"""

from __future__ import annotations

from .fpga import BOARDS, FpgaResult
from .fpga_bench import (ALT_SIZES, MODE, REFERENCE, SIZES, SWEEP_BOARD, SWEEP_SIZES, TARGET_MHZ,
                         _config, _design, base_params, bench_units)
from .units import describe, unit_kinds

__all__ = ["fit_array_model", "fit_largest", "model_basis", "unit_cost", "cost_rows",
           "comparisons", "dsp_lut_equivalent"]


def _records_of(records: dict, board: str, unit: str, params: dict, dsp: str = MODE):
    """``(fitting results, sizes that did not fit)`` of one unit at one precision."""
    want = tuple(sorted(params.items()))
    fits, failed = [], []
    for record in records.values():
        cfg = record["config"]
        if (cfg["board"], cfg["unit"], cfg["dsp"]) != (board, unit, dsp) \
                or tuple(map(tuple, cfg["params"])) != want or _design(record) != "scan" \
                or cfg.get("freq") != TARGET_MHZ.get(board):
            continue
        if record.get("fits"):
            fits.append(FpgaResult.from_dict(record["result"]))
        elif record.get("fits") is False:
            failed.append((cfg["rows"], cfg["cols"]))
    fits.sort(key=lambda r: (r.params["rows"] * r.params["cols"], r.params["cols"]))
    return fits, sorted(failed)


RESOURCES = {"LUT": "unit_lut", "FF": "unit_ff", "DSP": "dsp", "BRAM": "bram"}


def model_basis(results: list[FpgaResult]) -> list[FpgaResult]:
    """The builds the cost model is fitted to: those at the bench's own shapes
    (:data:`~lowbit.hw.fpga_bench.SIZES`, and :data:`~lowbit.hw.fpga_bench.SWEEP_SIZES` on the
    sweep board), so that the per-PE slope stays the measured difference between two of them;
    other builds (the largest-array verification) then check the model instead of moving it.
    All builds if fewer than two shapes are at those sizes."""
    if not results:
        return []
    board = results[0].board
    shapes = set(SIZES.get(board, ())) | set(ALT_SIZES.get(board, ())) \
        | (set(SWEEP_SIZES) if board == SWEEP_BOARD else set())
    basis = [r for r in results if (r.params["rows"], r.params["cols"]) in shapes]
    if len({(r.params["rows"], r.params["cols"]) for r in basis}) < 2:
        return list(results)
    return basis


def fit_array_model(results: list[FpgaResult]) -> dict | None:
    """Fit ``cost = fixed + per_row * rows + per_col * cols + per_pe * rows * cols`` to each
    resource.

    ``per_pe`` is one processing element (its product logic, accumulator and output-bank
    register), ``per_row`` one array row's input registers, ``per_col`` one column's input
    registers, drain, bias and requantization, ``fixed`` the control. Least squares over the
    builds (exact for four independent shapes); the unit's own LUTs and FFs are used (the
    wrapper's share taken off). With three shapes (or four that do not separate rows) there is
    no ``per_row`` (0: a row's cost is counted in ``per_pe``), with two no ``fixed`` either.
    A resource whose ``per_row`` comes out negative (a row's cost is smaller than the builds'
    noise) is fitted again without it, so its row cost counts in ``per_pe`` as with three
    shapes. Other negative terms are kept: :func:`negative_terms` names them, and such a model
    is not a cost (the tables mark it unreliable). Needs builds of at least two shapes that
    differ in rows at equal cols; returns None otherwise.

    Returns ``{resource: {"fixed", "per_row", "per_col", "per_pe"}}`` for LUT, FF, DSP, BRAM.
    """
    import numpy as np
    shapes = {(r.params["rows"], r.params["cols"]) for r in results}
    if len(shapes) < 2:
        return None
    full = np.array([[1.0, r.params["rows"], r.params["cols"],
                      r.params["rows"] * r.params["cols"]] for r in results])
    terms = [0, 1, 2, 3]
    if len(shapes) < 4 or np.linalg.matrix_rank(full) < 4:
        terms = [0, 2, 3] if len(shapes) >= 3 else [2, 3]   # two shapes: no fixed term
    if np.linalg.matrix_rank(full[:, terms]) < len(terms):
        return None

    def solve(y, terms):
        coef = np.zeros(4)
        coef[terms] = np.linalg.lstsq(full[:, terms], y, rcond=None)[0]
        return coef

    model = {}
    for name, field in RESOURCES.items():
        y = np.array([float(getattr(r, field)) for r in results])
        coef = solve(y, terms)
        if 1 in terms and round(float(coef[1]), 9) < 0:
            coef = solve(y, [t for t in terms if t != 1])
        # Rounded so that an exact zero (a resource a PE does not use) prints as 0, not -7e-16.
        model[name] = {k: round(float(v), 9) + 0.0
                       for k, v in zip(("fixed", "per_row", "per_col", "per_pe"), coef)}
    return model


def negative_terms(model: dict) -> list[str]:
    """The growing terms (per PE, row, column) of ``model`` that came out negative, as
    ``"LUT per_pe -16"``: a unit cannot get cheaper with more PEs, so such a fit says only
    that its builds' noise exceeds the term; its costs are not to be used."""
    return [f"{name} {term} {model[name][term]:.3g}" for name in RESOURCES
            for term in ("per_row", "per_col", "per_pe") if model[name].get(term, 0.0) < 0]


def predict(model: dict, resource: str, rows: int, cols: int) -> float:
    m = model[resource]
    return (m["fixed"] + m.get("per_row", 0.0) * rows + m["per_col"] * cols
            + m["per_pe"] * rows * cols)


# nextpnr needs slack to place and route: a LUT count predicted above this share of the device
# is not counted as fitting.
LUT_FILL = 0.9


def fit_largest(results: list[FpgaResult], failed=(), also_built=()) -> dict | None:
    """Estimate the largest square ``n x n`` array of a unit that fits the board.

    Uses :func:`fit_array_model`; the wrapper's cost is added back (it is part of the build).
    ``n`` is the largest size whose every predicted resource stays within the device (LUTs
    within :data:`LUT_FILL`), capped below any square that was built and did not fit, and at
    64 (the units' largest array). A square that was built and fits is never undercut.

    Returns ``{"n", "limit", "model", "basis"}`` or None when the model cannot be fitted;
    ``n`` is None (and ``limit`` says why) when the model has negative terms
    (:func:`negative_terms`).
    """
    model = fit_array_model(results)
    if model is None:
        return None
    basis = [f"{r.params['rows']}x{r.params['cols']}" for r in results]
    if negative_terms(model):
        return {"n": None, "limit": "unreliable fit: " + ", ".join(negative_terms(model)),
                "model": model, "basis": basis}
    r0 = results[0]
    caps = {"LUT": LUT_FILL * r0.lut_available - r0.wrapper_lut,
            "FF": r0.ff_available - r0.wrapper_ff,
            "DSP": r0.dsp_available, "BRAM": r0.bram_available}
    sizes = {}
    for name, cap in caps.items():
        n = 0
        while n < 64 and predict(model, name, n + 1, n + 1) <= cap:
            n += 1
        sizes[name] = n
    limit = min(sizes, key=lambda k: sizes[k])
    n = sizes[limit]
    bad_squares = [rows for rows, cols in failed if rows == cols]
    if bad_squares and n >= min(bad_squares):
        n, limit = min(bad_squares) - 1, f"build of {min(bad_squares)}x{min(bad_squares)} failed"
    good_squares = [r.params["rows"] for r in list(results) + list(also_built)
                    if r.params["rows"] == r.params["cols"]]
    if good_squares and n < max(good_squares):
        n = max(good_squares)
    if n >= 64:
        limit = "array size (64)"
    return {"n": n, "limit": limit, "model": model, "basis": basis}


def macs_per_pe(result: FpgaResult, per_bit_mac: bool = False) -> float:
    """MACs one PE does per cycle: 1 (INT, log) or ``lanes`` 1-bit MACs (XNOR); with
    ``per_bit_mac`` XNOR counts p-bit MACs, ``lanes / (a_planes * w_planes)``."""
    d = describe(result.unit, **result.params)
    return float(d.precision_macs_per_pe if per_bit_mac else d.macs_per_pe)


def largest_table(records: dict) -> list[dict]:
    """One row per (board, unit, DSP mode) of the base precision: the largest array."""
    rows = []
    for board in BOARDS:
        for unit in bench_units():
            for dsp in ("off", "requant", "auto"):
                built, failed = _records_of(records, board, unit, base_params(unit), dsp)
                if not built and not failed:
                    continue
                fit = fit_largest(model_basis(built), failed, built) if built else None
                state = None
                if fit is not None and fit["n"] is not None:
                    def built_fits(n):
                        key = _config(board, unit, (n, n), base_params(unit), dsp).key
                        return records.get(key, {}).get("fits")
                    state = built_fits(fit["n"])
                    if state and (fit["n"] == 64 or built_fits(fit["n"] + 1) is False):
                        state = "verified"
                        above = _config(board, unit, (fit["n"] + 1,) * 2, base_params(unit),
                                        dsp).key
                        over = records.get(above, {}).get("overflow")
                        if over:    # what the next size up ran out of, from nextpnr
                            fit = dict(fit, limit=", ".join(
                                f"{bel} {used}/{avail} at {fit['n'] + 1}x{fit['n'] + 1}"
                                for bel, (used, avail) in over.items()))
                rows.append({"board": board, "unit": unit, "dsp": dsp, "fit": fit,
                             "built": built, "failed": failed, "verified": state})
    return rows


def dsp_lut_equivalent(result: FpgaResult) -> float:
    """LUTs one DSP block stands for on ``result``'s device: its share of the device's area,
    ``lut_available / dsp_available`` (iCE40UP5K 5280/8 = 660, ECP5-85F 83640/156 = 536)."""
    return result.lut_available / result.dsp_available


def precision_bits(unit: str, params: dict) -> int:
    """Bits per weight of a build: INT ``w_bits``, log ``bits`` (the code), XNOR ``w_planes``."""
    return describe(unit, **params).precision_bits


def _shape(r: FpgaResult) -> str:
    return f"{r.params['rows']}x{r.params['cols']}"


def unit_cost(results: list[FpgaResult]) -> dict | None:
    """Cost per MAC of one unit at one precision on one board, from builds at several sizes.

    Parameters
    ----------
    results : list of FpgaResult
        Builds of the same board, unit, parameters and DSP mode at different array shapes.

    Returns
    -------
    dict or None (fewer than two usable shapes) with

    * ``whole``: ``[(shape, LUTs per MAC of the whole unit)]`` per build, smallest first; the
      per-column drain and the control are shared by fewer MACs in small arrays, so this falls
      with the size;
    * ``per_pe``: the fitted per-PE slope of LUT, FF and DSP (:func:`fit_array_model`): what one
      more PE costs, the cost of large arrays;
    * ``macs_per_pe``: native MACs per PE per cycle (1; XNOR ``lanes`` 1-bit MACs) and
      ``bit_macs_per_pe``: MACs at the unit's precision (XNOR ``lanes / (a_planes*w_planes)``);
    * ``lut_per_mac``: marginal LUTs per native MAC, ``per_pe LUT / macs_per_pe``;
    * ``lut_eq_per_mac``: the same with the DSP slope counted as LUTs
      (:func:`dsp_lut_equivalent`), per MAC at the unit's precision;
    * ``int8_eq_lut_per_mac``: XNOR only, LUTs per INT8-equivalent MAC (64 binary MACs);
    * ``basis``: the shapes the model was fitted to (:func:`model_basis`) and ``checks``:
      ``[(shape, predicted unit LUTs, built unit LUTs)]`` for every other build;
    * ``unreliable``: the model's negative terms (:func:`negative_terms`; empty when it is a
      cost): the per-PE figures above are then not costs and the tables do not print them;
    * ``fmax``: ``[(shape, achieved MHz)]`` per build and ``target_mhz``, nextpnr's target.
    """
    basis = model_basis(results)
    model = fit_array_model(basis)
    if model is None:
        return None
    r0 = results[0]
    per_pe = {k: model[k]["per_pe"] for k in ("LUT", "FF", "DSP")}
    checks = [(_shape(r), predict(model, "LUT", r.params["rows"], r.params["cols"]), r.unit_lut)
              for r in results if r not in basis]
    macs = macs_per_pe(r0)
    bit_macs = macs_per_pe(r0, per_bit_mac=True)
    lut_eq = per_pe["LUT"] + per_pe["DSP"] * dsp_lut_equivalent(r0)
    d = describe(r0.unit, **r0.params)
    out = {"board": r0.board, "unit": r0.unit, "dsp": r0.dsp_mode, "params": dict(r0.params),
           "bits": d.precision_bits, "precision": d.precision_text(),
           "whole": [(_shape(r), r.lut_per_mac) for r in results],
           "per_pe": per_pe, "macs_per_pe": macs, "bit_macs_per_pe": bit_macs,
           "lut_per_mac": per_pe["LUT"] / macs, "lut_eq_per_mac": lut_eq / bit_macs,
           "int8_eq_lut_per_mac": None, "fmax_mhz": min(r.fmax_mhz for r in results),
           "basis": [_shape(r) for r in basis], "checks": checks,
           "unreliable": negative_terms(model),
           "fmax": [(_shape(r), r.fmax_mhz) for r in results], "target_mhz": r0.target_mhz}
    if d.int8_eq_macs:
        out["int8_eq_lut_per_mac"] = per_pe["LUT"] / macs * d.int8_eq_macs
    return out


def _groups(records: dict) -> dict:
    """``{(board, unit, params key, dsp): [FpgaResult, ...]}`` of every build that fits."""
    groups: dict = {}
    for record in records.values():
        if not record.get("fits") or _design(record) != "scan":
            continue
        cfg = record["config"]
        key = (cfg["board"], cfg["unit"], tuple(map(tuple, cfg["params"])), cfg["dsp"],
               cfg.get("freq"))
        groups.setdefault(key, []).append(FpgaResult.from_dict(record["result"]))
    for results in groups.values():
        results.sort(key=lambda r: (r.params["rows"] * r.params["cols"], r.params["cols"]))
    return groups


def cost_rows(records: dict) -> list[dict]:
    """:func:`unit_cost` of every (board, unit, precision, DSP mode) built at >= 2 shapes,
    in board, unit, bits order."""
    rows = [c for c in (unit_cost(rs) for rs in _groups(records).values()) if c is not None]
    rows.sort(key=lambda c: (list(BOARDS).index(c["board"]), unit_kinds().index(c["unit"]),
                             c["dsp"] != MODE, c["bits"]))
    return rows


def comparisons(records: dict) -> list[dict]:
    """How many times cheaper per MAC log-shift (4-bit codes) and XNOR are than INT8.

    Same board, base precisions (:func:`base_params`), PE arrays in LUT logic. One dict per
    (board, unit, measure) with ``int8``, ``value`` (LUTs per MAC) and ``ratio = int8 / value``
    (> 1: the unit is cheaper). Measures: ``marginal`` (per-PE slope per MAC; for XNOR per
    1-bit MAC, and ``marginal int8-eq`` per INT8-equivalent MAC of 64 binary MACs) and
    ``whole RxC`` (the whole unit, wrapper taken off, at the largest shape built for both).
    """
    out = []
    for board in BOARDS:
        base = {u: _records_of(records, board, u, base_params(u))[0] for u in bench_units()}
        if not base[REFERENCE]:
            continue
        ref_cost = unit_cost(base[REFERENCE])
        for unit in (u for u in bench_units() if u != REFERENCE):
            cost = unit_cost(base[unit]) if base[unit] else None
            if ref_cost and cost and not (ref_cost["unreliable"] or cost["unreliable"]):
                ref = ref_cost["lut_per_mac"]
                out.append({"board": board, "unit": unit, "measure": "marginal",
                            "int8": ref, "value": cost["lut_per_mac"],
                            "ratio": ref / cost["lut_per_mac"]})
                if cost["int8_eq_lut_per_mac"] is not None:
                    out.append({"board": board, "unit": unit, "measure": "marginal int8-eq",
                                "int8": ref, "value": cost["int8_eq_lut_per_mac"],
                                "ratio": ref / cost["int8_eq_lut_per_mac"]})
            # The whole unit at the largest shape built for both (the fixed part shared most).
            ref_at = {_shape(r): r.lut_per_mac for r in base[REFERENCE]}
            common = [r for r in base[unit] if _shape(r) in ref_at]
            if common:
                r = common[-1]
                out.append({"board": board, "unit": unit, "measure": f"whole {_shape(r)}",
                            "int8": ref_at[_shape(r)], "value": r.lut_per_mac,
                            "ratio": ref_at[_shape(r)] / r.lut_per_mac})
    return out


def bare_comparisons(records: dict) -> list[dict]:
    """Each unit's per-PE cost against its bare registered PE (same board, DSP mode, run).

    One dict per (board, unit, DSP mode) of the base precision that has both: ``per_pe`` (the
    unit's fitted per-PE LUT and DSP slope), ``bare`` (the bare PE's unit LUTs, DSPs and
    Fmax), ``lut_ratio = per-PE LUTs / bare LUTs`` (1: at the limit) and, for XNOR, LUTs per
    1-bit MAC of both.
    """
    def own(params):
        return {k: v for k, v in params.items() if k not in ("rows", "cols")}

    out = []
    for c in cost_rows(records):
        if own(c["params"]) != own(describe(c["unit"], **base_params(c["unit"])).params) \
                or c["unreliable"]:
            continue
        key = _config(c["board"], c["unit"], (1, 1), base_params(c["unit"]), c["dsp"],
                      "bare").key
        record = records.get(key, {})
        if not record.get("fits"):
            continue
        bare = FpgaResult.from_dict(record["result"])
        macs = c["macs_per_pe"]
        out.append({"board": c["board"], "unit": c["unit"], "dsp": c["dsp"],
                    "precision": c["precision"], "per_pe": c["per_pe"],
                    "bare": {"lut": bare.unit_lut, "dsp": bare.dsp, "fmax_mhz": bare.fmax_mhz},
                    "lut_ratio": c["per_pe"]["LUT"] / max(bare.unit_lut, 1),
                    "lut_per_mac": c["per_pe"]["LUT"] / macs,
                    "bare_lut_per_mac": bare.unit_lut / macs, "fmax_mhz": c["fmax_mhz"]})
    return out
