"""Whole-model co-simulation: translate with every quantized matmul executed by the Verilated RTL.

``lowbit cosim --model PACKED --data-dir D --split S`` decodes a test split with a packed model
(:func:`lowbit.sw.quant.packed.load_packed`) while every integer matmul of the model runs twice:

* on the Verilated matmul unit that the package's scheme needs (INT unit for INT8/INT6 and for
  Q.K^T / attention.V, log-shift unit for logB weights, XNOR-popcount unit for BMT and the
  binary-coding mixed scheme), through the compiled harness (:mod:`lowbit.sim.harness`), and
* on the golden kernel (:mod:`lowbit.sw.golden`) with the same integer operands.

The two accumulators are compared with equality at every call (:class:`RtlKernels`, plugged in
with :func:`lowbit.sw.quant.kernels.use_kernels`); the first difference stops the run with the
matmul's site (layer, role, operand shapes) and the first differing element. The decode goes on
with the RTL's results, and at the end its tokens are compared with a pure golden decode of the
same batch. Batches of sentences are decoded together (each matmul call then covers the whole
batch: large transfers into the harness), and ``--jobs`` worker processes take batches from a
shared queue.

The parts: the beats come from the one packer (:mod:`lowbit.hw.packing`, the driver's beats
for each matmul, with the packed weights of each layer kept); the kernels that run the RTL and
check it are :mod:`lowbit.sim.cosim_kernels`; this module decodes the split, in batches, inline
or in a pool of worker processes.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import torch

from lowbit import LowbitError
from lowbit.contract import DEFAULT_MAX_K

from .cosim_kernels import CosimMismatch, GoldenRecord, RtlKernels, UnitStats, units_for_model
from .cosim_ops import RtlOps

__all__ = ["cosim_split", "CosimOptions", "CosimReport", "build_units", "make_batches"]


# ---------------------------------------------------------------------------------------------
# Decoding a split through the RTL

SEQUENCER_NOT_ON_RAY = "--engine sequencer runs in local --jobs processes, not on Ray"


@dataclass
class CosimOptions:
    """Settings of a co-simulation run (the CLI flags)."""
    rows: int = 8
    cols: int = 8
    max_k: int = DEFAULT_MAX_K
    lanes: int = 32
    vector_lanes: int = 8                # elements per beat of the vector units
    beam: int = 1
    batch_size: int = 64
    jobs: int = 1
    plant_fault: int | None = None      # test hook: RtlKernels.plant_fault(call) in the job
    # that decodes the first batch
    rtl_fault: str | None = None        # test only: faulty RTL variant (lowbit.hw.faults:
    # a matmul fault of FAULTS or a vector-unit fault of VECTOR_FAULTS)
    harnesses: dict = field(default_factory=dict)  # built libraries, handed to the workers
    ray: str | None = None              # None: local processes; "": a local Ray; else its address
    crash_once: str | None = None       # test hook (Ray): the first batch kills its worker once
    engine: str = "units"               # "units": each operation on its own Verilated unit;
    # "sequencer": whole sentences on the Verilated sequencer top (integer-only packages)


@dataclass
class CosimReport:
    """Outcome of :func:`cosim_split`."""
    sentences: int = 0
    identical: int = 0
    differing: list = field(default_factory=list)     # sentence indices whose tokens differ
    mismatch: dict | None = None                      # CosimMismatch.info of the first one
    units: list = field(default_factory=list)         # UnitStats, summed over jobs
    ops: dict = field(default_factory=dict)           # operation -> [calls on RTL, calls]
    # (the integer-only model's operations between the matmuls; empty for other models)
    seconds: float = 0.0
    build_seconds: float = 0.0
    translations: dict = field(default_factory=dict)  # sentence index -> token ids (RTL)
    programs: dict = field(default_factory=dict)      # sequencer engine: program -> [runs,
    # cycles] ("encoder pass", "decoder step")

    @property
    def cycles(self) -> int:
        return sum(u.cycles for u in self.units)

    @property
    def ideal_cycles(self) -> float:
        return sum(u.ideal_cycles for u in self.units)

    @property
    def utilisation(self) -> float:
        return self.ideal_cycles / self.cycles if self.cycles else 0.0

    @property
    def sim_seconds(self) -> float:
        return sum(u.sim_seconds for u in self.units)

    @property
    def ok(self) -> bool:
        return self.mismatch is None and self.identical == self.sentences


def encode_sentences(tokenizer, sentences, limit: int, warn) -> list:
    """Token ids of each sentence (None for an empty line), truncated as translate() does."""
    out = []
    for i, s in enumerate(sentences):
        if not s.strip():
            out.append(None)
            continue
        ids = tokenizer.encode(s, "source")
        if len(ids) > limit:
            warn(f"line {i + 1}: input of {len(ids)} tokens truncated to {limit}")
            ids = ids[:limit - 1] + [tokenizer.eos_id]
        out.append(ids)
    return out


def make_batches(encoded: list, batch_size: int) -> list[list[int]]:
    """Sentence indices in batches of similar source length (longest first: the slowest
    batches start first, so parallel jobs finish together)."""
    order = sorted((i for i, ids in enumerate(encoded) if ids is not None),
                   key=lambda i: (-len(encoded[i]), i))
    return [order[j:j + batch_size] for j in range(0, len(order), batch_size)]


@torch.no_grad()
def _decode(model, src: torch.Tensor, opts) -> list[list[int]]:
    """The decode co-simulation runs: greedy with retiring sentences, or beam search."""
    from lowbit.sw.decode import decode_batch, greedy_search

    if opts.beam == 1:
        return greedy_search(model, src, opts, retire=True)
    return decode_batch(model, src, opts)


class _Worker:
    """One process's share: the model, its units, decoding of batches through RTL and golden."""

    def __init__(self, model_dir: str, opts: CosimOptions):
        from lowbit.sw.checkpoint import load_model
        from lowbit.sw.decode import DecodeOptions

        from lowbit.hw.faults import VECTOR_FAULTS

        self.model, self.tokenizer, _ = load_model(model_dir)
        vector_fault = opts.rtl_fault if opts.rtl_fault in VECTOR_FAULTS else None
        self.rtl = RtlKernels(rows=opts.rows, cols=opts.cols, max_k=opts.max_k,
                              lanes=opts.lanes, units=units_for_model(self.model),
                              fault=None if vector_fault else opts.rtl_fault)
        # the integer-only model's other operations run on the vector units
        self.ops = (RtlOps(self.model.config, lanes=opts.vector_lanes, fault=vector_fault)
                    if getattr(self.model, "integer_only", False) else None)
        self.last_ops: dict = {}
        self.decode_opts = DecodeOptions(beam=opts.beam, batch_size=opts.batch_size)

    def batch(self, encoded: list, plant_fault: int | None = None) -> tuple[list, list]:
        """Decode one batch (token id lists) with the RTL and with the golden kernels.

        Returns ``(rtl ids, golden ids)``; raises :class:`CosimMismatch` at the first matmul
        whose RTL result differs.
        """
        from lowbit.sw.decode import pad_batch
        from lowbit.sw.quant import kernels

        src = pad_batch(encoded, self.tokenizer.pad_id)
        if plant_fault is not None:
            self.rtl.calls = 0
            self.rtl.plant_fault(plant_fault)
        # The golden decode first, recording its kernel results: the RTL decode then compares
        # each RTL result with the recorded golden result of the same call when the operands
        # are equal (checked), instead of running every golden kernel a second time.
        record = GoldenRecord()
        with kernels.use_kernels(**record.kernels()):
            gold_ids = _decode(self.model, src, self.decode_opts)
        self.rtl.replay = record
        subs = dict(self.rtl.kernels())
        if self.ops is not None:
            before = self.ops.op_counts()
            self.ops.new_batch()
            subs.update(self.ops.kernels())
        try:
            with kernels.use_kernels(**subs):
                rtl_ids = _decode(self.model, src, self.decode_opts)
        finally:
            self.rtl.replay = None
            if self.ops is not None:
                self.last_ops = _ops_delta(self.ops.op_counts(), before)
        return rtl_ids, gold_ids

    def stats(self) -> list:
        return self.rtl.stats() + (self.ops.stats() if self.ops is not None else [])

    def close(self) -> None:
        self.rtl.close()
        if self.ops is not None:
            self.ops.close()


class _SeqWorker:
    """A job of the sequencer engine: each batch decoded greedily on one Verilated sequencer
    top (:func:`lowbit.sim.seq_compile.sequencer_greedy_batch`: one matmul row per sentence
    in the decoder step's linear layers, its scratchpad checked against the compiled golden
    chain after every encoder pass and the first step) and each sentence by the golden
    greedy decode; ``stats()`` has one entry per command kind."""

    def __init__(self, model_dir: str, opts: CosimOptions):
        from lowbit.sw.checkpoint import load_model

        self.model, self.tokenizer, _ = load_model(model_dir)
        self.array = {"fault": opts.rtl_fault, "mm_rows": opts.rows, "mm_cols": opts.cols}
        self.seq = None
        self.last_ops: dict = {}
        self.last_programs: dict = {}
        self._stats: dict = {}

    def batch(self, encoded: list, plant_fault: int | None = None) -> tuple[list, list]:
        from lowbit.sw.decode import DecodeOptions, greedy_search

        from .seq_compile import ModelCompiler, sequencer_for, sequencer_greedy_batch

        gold = [greedy_search(self.model, torch.tensor([ids]), DecodeOptions())[0]
                for ids in encoded]
        if self.seq is None:
            probe = ModelCompiler(self.model, src_len=1, max_tgt=1).program
            self.seq = sequencer_for(probe, **self.array)
        run = sequencer_greedy_batch(self.model, encoded, seq=self.seq, check=True)
        if run.mismatch is not None:
            raise CosimMismatch(run.mismatch)
        self.last_programs = {"encoder pass": [len(encoded), sum(run.encoder_cycles)],
                              "decoder step": [len(run.step_cycles), sum(run.step_cycles)]}
        share = run.seconds / max(1, sum(c for _, c in run.ops.values()))
        for op, (calls, cycles) in run.ops.items():
            st = self._stats.setdefault(op, UnitStats(op, {
                "engine": "sequencer", "array": f"{self.array['mm_rows']}x"
                                               f"{self.array['mm_cols']}"}))
            st.calls += calls
            st.cycles += cycles
            st.sim_seconds += cycles * share
            if op == "matmul":
                st.macs += run.macs
                st.ideal_cycles += run.macs / (self.array["mm_rows"]
                                               * self.array["mm_cols"])
        return run.tokens, gold

    def stats(self) -> list:
        return list(self._stats.values())

    def close(self) -> None:
        if self.seq is not None:
            self.seq.close()


def _worker(model_dir: str, opts: CosimOptions):
    """The job's worker for ``opts.engine``."""
    return (_SeqWorker if opts.engine == "sequencer" else _Worker)(model_dir, opts)


def _merge_programs(report: CosimReport, programs: dict) -> None:
    for name, (runs, cycles) in programs.items():
        have = report.programs.setdefault(name, [0, 0])
        have[0] += runs
        have[1] += cycles


def _ops_delta(now: dict, before: dict) -> dict:
    return {op: [n[0] - before.get(op, [0, 0])[0], n[1] - before.get(op, [0, 0])[1]]
            for op, n in now.items()}


def _merge_ops(report: CosimReport, ops: dict) -> None:
    for op, (rtl, total) in ops.items():
        have = report.ops.setdefault(op, [0, 0])
        have[0] += rtl
        have[1] += total


def _job_main(model_dir, opts, tasks, results):
    """Worker process: take ``(batch number, [(index, ids)])`` from ``tasks`` until None."""
    from lowbit.sim.verilator import remember_harnesses

    torch.set_num_threads(1)
    remember_harnesses(opts.harnesses)
    try:
        worker = _worker(model_dir, opts)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which exits
        results.put(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        task = tasks.get()
        if task is None:
            break
        number, items = task
        try:
            fault = opts.plant_fault if number == 0 else None
            rtl_ids, gold_ids = worker.batch([ids for _, ids in items], fault)
        except CosimMismatch as e:
            results.put(("mismatch", e.info))
            break
        except BaseException as e:  # noqa: BLE001
            results.put(("error", f"{type(e).__name__}: {e}"))
            break
        results.put(("ops", worker.last_ops))
        results.put(("programs", getattr(worker, "last_programs", {})))
        results.put(("batch", [(i, r, g) for (i, _), r, g in zip(items, rtl_ids, gold_ids)]))
    results.put(("stats", [s.to_dict() for s in worker.stats()]))
    worker.close()


def _merge_stats(report: CosimReport, stats: list) -> None:
    for d in stats:
        s = UnitStats.from_dict(d) if isinstance(d, dict) else d
        for u in report.units:
            if u.unit == s.unit and u.params == s.params:
                u.add(s)
                break
        else:
            report.units.append(UnitStats(s.unit, dict(s.params)))
            report.units[-1].add(s)


def build_units(model, opts: CosimOptions, log=None) -> float:
    """Build (cached) every unit the model needs before workers start; returns seconds."""
    from lowbit.sim.harness import VerilatedUnit

    t0 = time.perf_counter()
    from lowbit.hw.faults import FAULTS

    kernels = RtlKernels(rows=opts.rows, cols=opts.cols, max_k=opts.max_k, lanes=opts.lanes,
                         fault=opts.rtl_fault if opts.rtl_fault in FAULTS else None)
    for kind, need in units_for_model(model):
        params = kernels.unit_params(kind, need)
        if log:
            log(f"unit {kind}: " + " ".join(f"{k}={v}" for k, v in params.items()))
        VerilatedUnit(kind, **params).close()
    return time.perf_counter() - t0


def build_sequencer(model, opts: CosimOptions, log=None) -> float:
    """Check that ``model`` runs on the sequencer and build (cached) its Verilated top before
    workers start; returns seconds."""
    from .seq_compile import PROGRAM_DEPTH, ModelCompiler, sequencer_for

    t0 = time.perf_counter()
    if not getattr(model, "integer_only", False):
        raise LowbitError("--engine sequencer runs an integer-only package (every operation "
                          "on integers, e.g. multi30k-en-de-int8i), not this one")
    # A decoder step of --batch-size sentences must fit the program memory (its length does
    # not depend on the sources' lengths).
    comp = ModelCompiler(model, src_len=[1] * opts.batch_size, max_tgt=1)
    for b in range(opts.batch_size):
        comp.encoder([model.config.eos_token_id], sentence=b)
    comp.program.take_commands()
    comp.decoder_step()
    words = len(comp.program.command_words())
    if words > PROGRAM_DEPTH:
        raise LowbitError(f"--batch-size {opts.batch_size}: a decoder step of that many "
                          f"sentences is {words} program words, the sequencer has "
                          f"{PROGRAM_DEPTH}")
    probe = comp.program
    if log:
        log(f"sequencer: {opts.rows}x{opts.cols} INT8 matmul array, scratchpad "
            f"{probe.depth:,} words, max_len {probe.max_len}, score_len {probe.score_len}, "
            f"decoder step of {opts.batch_size} sentence(s) {words - 1} commands")
    sequencer_for(probe, fault=opts.rtl_fault, mm_rows=opts.rows, mm_cols=opts.cols).close()
    return time.perf_counter() - t0


def cosim_split(model_dir: str, sentences: list[str], opts: CosimOptions, *, progress=None,
                log=None, warn=None) -> CosimReport:
    """Co-simulate the translation of ``sentences`` (see the module docstring).

    ``progress(n)`` is called as sentences finish; ``log(line)`` gets setup messages. With
    ``opts.jobs > 1`` the batches are shared out to that many worker processes.
    """
    from lowbit.sw.checkpoint import load_model

    model, tokenizer, meta = load_model(model_dir)
    if not units_for_model(model):
        raise LowbitError(f"{model_dir} has no quantized matmuls to co-simulate (a float "
                          f"model: quantize it with `lowbit quantize` first)")
    if warn is None:
        warn = lambda m: print(f"lowbit: warning: {m}", file=sys.stderr)  # noqa: E731
    report = CosimReport(sentences=len(sentences))
    if opts.engine == "sequencer":
        if opts.ray is not None:
            raise LowbitError(SEQUENCER_NOT_ON_RAY)
        report.build_seconds = build_sequencer(model, opts, log)
    else:
        report.build_seconds = build_units(model, opts, log)
    from lowbit.sim.verilator import harness_memo
    opts.harnesses = harness_memo()
    limit = min(256, model.config.max_position_embeddings)
    encoded = encode_sentences(tokenizer, sentences, limit, warn)
    empty = sum(1 for e in encoded if e is None)
    report.identical += empty           # an empty line translates to "" without the model
    if progress and empty:
        progress(empty)
    batches = make_batches(encoded, opts.batch_size)
    t0 = time.perf_counter()
    if opts.ray is not None:
        del model
        _run_ray(model_dir, opts, encoded, batches, report, progress)
    elif opts.jobs <= 1 or len(batches) <= 1:
        del model
        _run_inline(model_dir, opts, encoded, batches, report, progress)
    else:
        del model
        _run_jobs(model_dir, opts, encoded, batches, report, progress)
    report.seconds = time.perf_counter() - t0
    return report


def _take(report: CosimReport, rows, progress) -> None:
    for i, r, g in rows:
        report.translations[i] = r
        if r == g:
            report.identical += 1
        else:
            report.differing.append(i)
    if progress:
        progress(len(rows))


def _run_inline(model_dir, opts, encoded, batches, report, progress) -> None:
    worker = _worker(model_dir, opts)
    try:
        for number, batch in enumerate(batches):
            fault = opts.plant_fault if number == 0 else None
            try:
                rtl_ids, gold_ids = worker.batch([encoded[i] for i in batch], fault)
            except CosimMismatch as e:
                report.mismatch = e.info
                break
            _merge_ops(report, worker.last_ops)
            _merge_programs(report, getattr(worker, "last_programs", {}))
            _take(report, list(zip(batch, rtl_ids, gold_ids)), progress)
    finally:
        _merge_stats(report, worker.stats())
        worker.close()


class RayWorker:
    """A Ray actor that decodes batches like a ``--jobs`` process. Every batch returns its own
    unit statistics, so a batch retried after a lost worker is counted once, as without the
    failure. On a node other than the driver's the units are built there (its own cache)."""

    def __init__(self, model_dir, opts):
        from lowbit.sim.verilator import remember_harnesses

        torch.set_num_threads(1)
        remember_harnesses(opts.harnesses)
        self.opts = opts
        self.worker = _Worker(model_dir, opts)

    def batch(self, number: int, items: list):
        marker = self.opts.crash_once
        if marker is not None and number == 0 and not os.path.exists(marker):
            with open(marker, "w") as f:        # test hook: die like a lost node, once
                f.write(str(os.getpid()))
            os._exit(1)
        before = [s.to_dict() for s in self.worker.stats()]
        fault = self.opts.plant_fault if number == 0 else None
        try:
            rtl_ids, gold_ids = self.worker.batch([ids for _, ids in items], fault)
        except CosimMismatch as e:
            return "mismatch", e.info, [], {}
        rows = [(i, r, g) for (i, _), r, g in zip(items, rtl_ids, gold_ids)]
        return ("batch", rows, _stats_delta([s.to_dict() for s in self.worker.stats()], before),
                self.worker.last_ops)


def _stats_delta(now: list[dict], before: list[dict]) -> list[dict]:
    """Per-unit statistics of ``now`` minus ``before`` (units are only ever added)."""
    old = {(d["unit"], repr(d["params"])): d for d in before}
    out = []
    for d in now:
        b = old.get((d["unit"], repr(d["params"])))
        out.append({k: (v - b[k] if b is not None and isinstance(v, (int, float)) else v)
                    for k, v in d.items()})
    return out


def _run_ray(model_dir, opts, encoded, batches, report, progress) -> None:
    """Batches as calls to ``opts.jobs`` Ray actors; a dead actor is restarted and its call
    retried (possibly on another node). Results come back to this process only."""
    from lowbit.ray_session import ray_session

    with ray_session(opts.ray, opts.jobs) as ray:
        actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=3)(RayWorker)
        workers = [actor.remote(model_dir, opts) for _ in range(min(opts.jobs, len(batches)))]
        queue = list(enumerate(batches))
        pending = {}

        def submit(w):
            number, batch = queue.pop(0)
            pending[w.batch.remote(number, [(i, encoded[i]) for i in batch])] = w

        for w in workers:
            if queue:
                submit(w)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            w = pending.pop(ref)
            try:
                kind, payload, stats, ops = ray.get(ref)
            except ray.exceptions.RayError as e:
                raise LowbitError(f"co-simulation on Ray failed: "
                                  f"{str(e).strip().splitlines()[-1][:300]}") from None
            _merge_stats(report, stats)
            _merge_ops(report, ops)
            if kind == "mismatch":
                report.mismatch = payload
                break
            _take(report, payload, progress)
            if queue:
                submit(w)


def _run_jobs(model_dir, opts, encoded, batches, report, progress) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")       # fresh interpreters: no forked torch thread pools
    tasks, results = ctx.Queue(), ctx.Queue()
    jobs = min(opts.jobs, len(batches))
    for number, batch in enumerate(batches):
        tasks.put((number, [(i, encoded[i]) for i in batch]))
    for _ in range(jobs):
        tasks.put(None)
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # one core per job
    procs = [ctx.Process(target=_job_main, args=(model_dir, opts, tasks, results), daemon=True)
             for _ in range(jobs)]
    try:
        for p in procs:
            p.start()
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    finished, error = 0, None
    try:
        while finished < jobs:
            try:
                kind, payload = results.get(timeout=5)
            except Exception:  # noqa: BLE001 - queue.Empty: check the workers are alive
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    error = f"a co-simulation job died (exit code {dead[0].exitcode})"
                    break
                continue
            if kind == "batch":
                _take(report, payload, progress)
            elif kind == "ops":
                _merge_ops(report, payload)
            elif kind == "programs":
                _merge_programs(report, payload)
            elif kind == "stats":
                _merge_stats(report, payload)
                finished += 1
            elif kind == "mismatch":
                if report.mismatch is None:
                    report.mismatch = payload
                break           # stop at the first mismatch: the others are terminated
            else:
                error = payload
                break
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    if error is not None:
        raise LowbitError(f"co-simulation job failed: {error}")
