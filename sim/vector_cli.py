"""``lowbit verify --unit softmax|argmax|...``: rows of a vector operation through the Verilated
unit and the golden operation, compared by equality (the vector-unit branch of sim/cli.py)."""

from __future__ import annotations

import sys
import time

import numpy as np

from lowbit import LowbitError

__all__ = ["verify_vector"]


def verify_vector(args, hw) -> int:
    """Run ``args.m`` random rows of ``args.k`` elements (seed ``args.seed``), then the unit's
    corner cases, through the RTL of the vector unit described by ``hw`` and through its golden
    operation. Prints a line per mismatch (at most five) and ``bit-exact: MATCHED/TOTAL`` last;
    returns 0 when every element matches, else 1."""
    from tqdm import tqdm

    from lowbit.sim.vector_harness import VerilatedVector

    if args.k > hw.max_len:
        raise LowbitError(f"--k {args.k} exceeds the unit's max_len {hw.max_len} "
                          f"(raise it with --max-len)")
    params = " ".join(f"{k}={v}" for k, v in hw.params.items())
    print(f"unit {hw.kind}: {params}", flush=True)
    start = time.perf_counter()
    print("building the Verilated unit (cached after the first build) ...", flush=True)
    with VerilatedVector(hw.kind, **hw.params) as rtl:
        print(f"  ready in {time.perf_counter() - start:.1f} s", flush=True)
        rng = np.random.default_rng(args.seed)
        cases = [(f"random {args.m}x{args.k}", hw.random_rows(rng, args.m, args.k))]
        cases += hw.corner_cases(rng)
        matched = total = cycles = 0
        shown = 0
        sim = 0.0
        for i, (name, ops) in enumerate(tqdm(cases, unit="case", desc=f"RTL {hw.kind}",
                                             file=sys.stderr, disable=None)):
            res = rtl.run(ops, gaps=args.backpressure, stalls=args.backpressure,
                          seed=args.seed + i)
            want = rtl.expected(ops)
            if i == 0:
                cycles, sim = res.cycles, res.seconds
            matched += int((res.y == want).sum())
            total += int(want.size)
            for idx in np.argwhere(res.y != want):
                shown += 1
                if shown <= 5:
                    at = ", ".join(str(int(j)) for j in idx)
                    print(f"MISMATCH {name} y[{at}]: RTL {res.y[tuple(idx)]}, golden "
                          f"{want[tuple(idx)]}")
    if shown > 5:
        print(f"... and {shown - 5} more mismatches")
    rows = args.m
    print(f"random rows: cycles {cycles} ({cycles / rows:.1f} per row of {args.k}; "
          f"cycles_per_row {hw.cycles_per_row(args.k)}), "
          f"{cycles / max(sim, 1e-9) / 1e6:.2f} M cycles/s; corner cases: {len(cases) - 1}")
    print(f"bit-exact: {matched}/{total}", flush=True)
    return 0 if matched == total else 1
