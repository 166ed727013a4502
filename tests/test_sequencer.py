# amaranth: UnusedElaboratable=no
"""The sequencer top (hw/sequencer.py) runs compiled command lists (hw/seq_program.py) in the
Amaranth simulator; every result it writes to the scratchpad equals the golden operation. The
same programs on the Verilated core (sim/seq_harness.py, a second simulator) give the same
results and the same cycle counts."""

from functools import lru_cache

import re

import numpy as np
import pytest

from lowbit.hw.seq_program import Program, Region, run_program
from lowbit.hw.sequencer import Sequencer
from lowbit.hw.verilog import flat_verilog, lint_verilog

VECTOR_KINDS = ("requant", "softmax", "residual", "layernorm", "argmax")


def _assert_equal(program, run):
    for name, want in program.golden.items():
        got = run.results[name]
        assert got.shape == want.shape, name
        if not np.array_equal(got, want):
            bad = np.argwhere(got != want)[0]
            raise AssertionError(f"{name}{tuple(bad)}: RTL {got[tuple(bad)]}, golden "
                                 f"{want[tuple(bad)]}")


@lru_cache(maxsize=None)
def _verilated(max_len, mm_rows=1, mm_cols=1):
    from lowbit.sim.seq_harness import VerilatedSequencer

    return VerilatedSequencer(depth=1 << 16, program_depth=256, max_len=max_len,
                              mm_rows=mm_rows, mm_cols=mm_cols)


def _same_on_verilator(program, run, mm_rows=1, mm_cols=1):
    """The program on the Verilated core: every region equal to golden, and the cycles of
    every command equal to the Amaranth simulation's."""
    v = _verilated(program.max_len, mm_rows, mm_cols).run(program)
    _assert_equal(program, v)
    assert v.cycles == run.cycles
    assert v.command_cycles == [int(c) for c in run.command_cycles]
    return v


def _add_rows(p, kind, name, ops):
    """One command per group of rows that share their cfg scalars (the corner cases vary
    them from row to row)."""
    d = p.descriptions[kind]
    x = d.x_fields(ops)
    cfg = d.cfg_fields(ops)
    rows = x["data"].shape[0]
    for r in range(rows):
        p.vector(kind, f"{name}.{r}", {n: v[r:r + 1] for n, v in x.items()},
                 {n: int(np.asarray(v)[r]) for n, v in cfg.items()})


@pytest.mark.parametrize("kind", VECTOR_KINDS)
def test_single_vector_commands(kind):
    """Random rows (one command of 3 rows) and every corner case of the unit's kind."""
    rng = np.random.default_rng(15)
    p = Program(depth=4096, max_len=64)
    d = p.descriptions[kind]
    ops = d.random_rows(rng, 3, 13)
    x, cfg = d.x_fields(ops), d.cfg_fields(ops)
    # One command for the three rows: the cfg scalars of row 0 for all of them.
    p.vector(kind, "random", x, {n: int(np.asarray(v)[0]) for n, v in cfg.items()})
    for case, cops in d.corner_cases(rng):
        if d.x_fields(cops)["data"].shape[1] <= p.max_len:
            _add_rows(p, kind, case, cops)
    assert len(p.commands) > 1
    run = run_program(p, program_depth=256)
    _assert_equal(p, run)
    _same_on_verilator(p, run)
    # The sequencer adds at most a cycle per row and a few per command to the unit's own.
    extra = run.command_cycles[0] - 3 * d.cycles_per_row(13)
    assert 0 <= extra <= 3 + 6, extra
    assert run.cycles == sum(run.command_cycles) + 1     # + the HALT's fetch


def test_matmul_command_and_broadcast_fields():
    """A matmul (int8 extremes included) and a vector command reading layer constants
    ([length] fields) for every row."""
    rng = np.random.default_rng(7)
    p = Program(depth=1024, max_len=64)
    a = rng.integers(-128, 128, (3, 9))
    a[0] = -128
    w = rng.integers(-128, 128, (5, 9))
    w[1] = -128
    bias = rng.integers(-2**20, 2**20, 5)
    y = p.matmul("y", a, w, bias)
    p.vector("requant", "q", {"data": y, "mult": rng.integers(0, 2**16, 5),
                              "shift": rng.integers(0, 24, 5)}, {"relu": 1})
    run = run_program(p)
    _assert_equal(p, run)
    assert np.array_equal(run.results["y"], a @ w.T + bias)
    _same_on_verilator(p, run)


def _requant_params(rng, n, k, width=8):
    """Per-channel mult/shift that bring a K-long int8 dot product near ``width`` bits."""
    shift = np.full(n, 16 + int(np.log2(k)) + 14 - width, np.int64)
    return rng.integers(2**14, 2**15, n), shift


def test_attention_and_ffn_block():
    """One attention head and one FFN block with residuals and LayerNorms, chained through
    the scratchpad (each command reads what the one before wrote), then an output
    projection and argmax; every intermediate tensor equals the golden chain."""
    rng = np.random.default_rng(2026)
    L, D, F, V = 5, 8, 16, 12
    p = Program(depth=4096, max_len=64)
    x = p.put("x", rng.integers(-128, 128, (L, D)))

    def linear(name, a, w, bias, relu=0):
        acc = p.matmul(f"{name}.acc", a, w, bias)
        mult, shift = _requant_params(rng, w.shape[0], w.shape[1])
        return p.vector("requant", name, {"data": acc, "mult": mult, "shift": shift},
                        {"relu": relu})

    def weights(n, k):
        return rng.integers(-128, 128, (n, k)), rng.integers(-2000, 2000, n)

    q = linear("q", x, *weights(D, D))
    k = linear("k", x, *weights(D, D))
    wv, _ = weights(D, D)
    # V^T = Wv @ x^T: the P @ V matmul reads V^T's rows as its weights (no transpose needed).
    vt = linear("vt", p.put("wv", wv), p.golden["x"], np.zeros(L, np.int64))
    scores = p.matmul("scores", q, k, np.zeros(L, np.int64))
    assert np.abs(p.golden["scores"]).max() < 2**15
    probs = p.vector("softmax", "probs", {"data": scores, "keep": np.tril(np.ones((L, L)))})
    ctx = linear("ctx", probs, p.golden["vt"], np.zeros(D, np.int64))
    ma, sa = _requant_params(rng, D, 1, 14)
    res = p.vector("residual", "res1", {"data": x, "b": ctx, "mult_a": ma, "shift_a": sa,
                                        "mult_b": ma, "shift_b": sa})
    g, b = rng.integers(2**12, 2**14, D), rng.integers(-2**20, 2**20, D)
    h = p.vector("layernorm", "ln1", {"data": res, "g": g, "b": b}, {"shift": 16, "eps": 1})
    f1 = linear("ffn1", h, *weights(F, D), relu=1)
    f2 = linear("ffn2", f1, *weights(D, F))
    res2 = p.vector("residual", "res2", {"data": h, "b": f2, "mult_a": ma, "shift_a": sa,
                                         "mult_b": ma, "shift_b": sa})
    h2 = p.vector("layernorm", "ln2", {"data": res2, "g": g, "b": b}, {"shift": 16, "eps": 1})
    logits = p.matmul("logits", h2, *weights(V, D))
    p.vector("argmax", "tokens", {"data": logits})
    run = run_program(p)
    _assert_equal(p, run)
    _same_on_verilator(p, run)
    # The chain is not trivial: softmax rows are masked, ReLU clips, tokens differ.
    assert (run.results["ffn1"] == 0).any() and (run.results["ffn1"] > 0).any()
    assert (run.results["probs"][0, 1:] == 0).all() and len(set(run.results["tokens"])) > 1


def _tiled_matmuls(rng):
    """Matmuls whose M and N are not multiples of the arrays below (edge tiles): two-head
    attention through views (V read as V^T, :func:`_attention_program`), then one with int8
    extremes, and a requantize of its result."""
    p, *_ = _attention_program(rng)
    a = rng.integers(-128, 128, (7, 9))
    a[0] = -128
    w = rng.integers(-128, 128, (6, 9))
    w[1] = -128
    y = p.matmul("y", a, w, rng.integers(-2**20, 2**20, 6))
    p.vector("requant", "r", {"data": y, "mult": rng.integers(0, 2**16, 6),
                              "shift": rng.integers(0, 24, 6)}, {"relu": 1})
    return p


@pytest.mark.parametrize("mm_rows, mm_cols", [(1, 4), (4, 2)])
def test_matmul_array_tiles(mm_rows, mm_cols):
    """An R x C matmul array: every result equals the golden chain in the Amaranth simulator
    and on the Verilated core (R + 2C - 3 more read lanes, a C-word write), with the same
    cycles in both, and the matmuls take fewer cycles than on the 1 x 1 array."""
    p = _tiled_matmuls(np.random.default_rng(21))
    one = run_program(p)
    _assert_equal(p, one)
    run = run_program(p, mm_rows=mm_rows, mm_cols=mm_cols)
    _assert_equal(p, run)
    _same_on_verilator(p, run, mm_rows, mm_cols)
    mm = [i for i, c in enumerate(p.commands) if c["op"] == 1]
    assert all(run.command_cycles[i] < one.command_cycles[i] for i in mm)
    assert run.command_cycles[-1] == one.command_cycles[-1]      # the requantize


def test_compiler_and_parameter_errors():
    p = Program(depth=64, max_len=16)
    with pytest.raises(ValueError, match="operand a must lie in -128..127"):
        p.matmul("y", [[200]], [[1]], [0])
    with pytest.raises(ValueError, match="softmax takes x fields"):
        p.vector("softmax", "s", {"data": [[1, 2]]})
    with pytest.raises(ValueError, match="field keep has shape"):
        p.vector("softmax", "s2", {"data": [[1, 2]], "keep": [1, 1, 1]})
    with pytest.raises(ValueError, match="scratchpad of 64 words is full"):
        p.put("big", np.zeros((9, 9)))
    with pytest.raises(ValueError, match="Depth must be an integer of at least 2, not 1"):
        Sequencer(depth=1)
    with pytest.raises(ValueError, match="Mm_cols must be a power of two in 1..64, not 3"):
        Sequencer(mm_cols=3)


def test_verilog_lint_clean():
    """The whole top as one flat Verilog module passes the units' lint (-Wall, same waivers)."""
    src = flat_verilog(Sequencer(depth=256, program_depth=16, max_len=32), "sequencer")
    assert "module sequencer" in src
    lint_verilog(src, "sequencer")


def _record_layer_ops(layer: str, sentence: str):
    """The shipped integer-only model encodes ``sentence``; every operation at the sites of
    ``layer`` (the matmuls' ``int_matmul`` included) is recorded with its arguments and golden
    result."""
    import torch

    from lowbit.sw import golden
    from lowbit.sw.quant import kernels
    from lowbit.sw.quant.packed import load_packed

    model, tokenizer, _ = load_packed("lowbit/models/multi30k-en-de-int8i")
    rec = []

    def recorder(op):
        def run(*args, **kwargs):
            module = golden if op == "int_matmul" else kernels.OPS[op]
            out = getattr(module, op)(*args, **kwargs)   # the golden op
            if kernels.current_site().name.startswith(layer):
                rec.append((op, kernels.current_site().name, args, kwargs, out))
            return out
        return run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        src = torch.tensor([tokenizer.encode(sentence, "source")])
        ops = ("requantize", "softmax", "residual_add", "layernorm", "int_matmul")
        with kernels.use_kernels(**{op: recorder(op) for op in ops}):
            model.encode(src)
    finally:
        torch.set_num_threads(threads)
    return model.config, rec


def _head_views(p, chained, name, t):
    """Views of the heads ``t[0, h]`` ([R, C] each) of a [1, H, R, C] attention operand in
    the region an earlier command wrote, if one holds it: heads side by side in the columns
    (Q, K: ``[R, H*C]``), transposed there (V^T: ``[C, H*R]``) or one after the other
    (``[H*R, C]``); otherwise in a new region."""
    _, heads, rows, cols = t.shape
    t = t[0].numpy()
    layouts = [
        (t.transpose(1, 0, 2).reshape(rows, heads * cols),
         lambda r, h: r.view(h * cols, (rows, cols), heads * cols)),
        (t.transpose(2, 0, 1).reshape(cols, heads * rows),
         lambda r, h: r.view(h * rows, (rows, cols), 1, heads * rows)),
        (t.reshape(heads * rows, cols),
         lambda r, h: r.view(h * rows * cols, (rows, cols), cols)),
    ]
    for array, view in layouts:
        region = chained(array)
        if isinstance(region, Region):
            return [view(region, h) for h in range(heads)]
    region = p.put(name, layouts[-1][0])
    return [layouts[-1][1](region, h) for h in range(heads)]


@pytest.mark.slow
def test_real_encoder_layer_operations():
    """Encoder layer 0 of multi30k-en-de-int8i on a real sentence on the sequencer, with the
    model's own operands: every operation between the matmuls (requantize of q/k/v/fc1, the
    attention scores and P.V, softmax, two residual adds, two LayerNorms) and the attention
    matmuls (Q.K^T and P.V per head, through views), chained where one command's result is
    the next one's operand in the model, each equal to the golden model's tensor. The
    projections' and FFN's matmuls (1.6 M MACs each for fc1, fc2) take their int32 results
    from the model here: at one MAC per cycle they are beyond the Amaranth simulator."""
    from lowbit.sim.cosim_ops import RtlOps

    config, rec = _record_layer_ops("model.encoder.layers.0.", "A man is sleeping.")
    adapt = RtlOps(config)      # the operand mapping of the whole-model co-simulation
    p = Program(depth=65536, max_len=1024)
    want, produced = {}, []

    def chained(array):
        """The region an earlier command wrote with exactly these values, or the values."""
        for region in produced:
            g = p.golden[region.name]
            if g.shape == array.shape and np.array_equal(g, array):
                return region
        return array

    for i, (op, site, args, kwargs, out) in enumerate(rec):
        if op == "int_matmul":
            a, b, bias = args
            if bias is not None:
                continue        # a projection: its result comes from the model
            _, heads, rows, k = a.shape
            n = b.shape[2]
            a_views, w_views = _head_views(p, chained, site + ".a", a), \
                _head_views(p, chained, site + ".w", b)
            y = p.buffer(site, (heads * rows, n))
            zero = p.put(f"{site}.zero", np.zeros(n))
            for h in range(heads):
                p.matmul(f"{site}.{h}", a_views[h], w_views[h], zero,
                         out=y.view(h * rows * n, (rows, n), n))
            want[site] = out.reshape(heads * rows, n).numpy()
            produced.append(y)
            continue
        kind, params, ops, _ = getattr(adapt, f"_{op}")(*args, **kwargs)
        name = kind
        if kind == "requant":
            name = "requant16" if params["out_bits"] == 16 else "requant"
            if not params["per_channel"]:     # one scale for the tensor: the same per channel
                n = ops["data"].shape[1]
                ops = {**ops, "mult": np.repeat(ops["mult"][:, None], n, 1),
                       "shift": np.repeat(ops["shift"][:, None], n, 1)}
        d = p.descriptions[name]
        assert all(d.params[k] == v for k, v in params.items()
                   if k not in ("max_len", "per_channel")), (site, params)
        cfg = {k: np.asarray(v) for k, v in d.cfg_fields(ops).items()}
        assert all((v == v[0]).all() for v in cfg.values()), site
        x = d.x_fields(ops)
        x = {**x, "data": chained(x["data"])}
        region = p.vector(name, f"{i}:{site}", x, {k: int(v[0]) for k, v in cfg.items()})
        want[region.name] = out.reshape(region.shape).numpy()
        produced.append(region)
    assert {op for op, *_ in rec} == {"requantize", "softmax", "residual_add", "layernorm",
                                      "int_matmul"}
    assert len(want) == 13
    # q, k, v -> Q.K^T -> scores -> softmax -> P.V -> requantize run as one chain through the
    # scratchpad: every attention operand is a region an earlier command wrote.
    reads = {a for c in p.commands for a in c["src"][:2]}
    inputs = {r.addr for n, r in p.regions.items() if n.endswith((".a", ".w"))}
    assert not reads & inputs, "an attention operand came from the host"
    run = run_program(p)
    for name, tensor in want.items():
        assert np.array_equal(run.results[name], tensor), name
    _same_on_verilator(p, run)

def _attention_program(rng):
    """Two heads of attention (Q.K^T and P.V per head through views, softmax between), the
    requantized context and an output projection; ``(program, L, H, dh)``."""
    L, H, dh = 5, 2, 3
    D = H * dh
    p = Program(depth=2048, max_len=32)
    q = p.put("q", rng.integers(-20, 20, (L, D)))
    k = p.put("k", rng.integers(-20, 20, (L, D)))
    v = p.put("v", rng.integers(-128, 128, (L, D)))
    scores = p.buffer("scores", (H * L, L))
    ctx = p.buffer("ctx", (L, D))
    zero_l, zero_d = p.put("zero_l", np.zeros(L)), p.put("zero_dh", np.zeros(dh))
    for h in range(H):
        p.matmul(f"qk{h}", q.view(h * dh, (L, dh), D), k.view(h * dh, (L, dh), D), zero_l,
                 out=scores.view(h * L * L, (L, L), L))
    probs = p.vector("softmax", "probs", {"data": scores, "keep": np.ones(L)})
    for h in range(H):
        p.matmul(f"av{h}", probs.view(h * L * L, (L, L), L), v.view(h * dh, (dh, L), 1, D),
                 zero_d, out=ctx.view(h * dh, (L, dh), D))
    mult, shift = _requant_params(rng, D, 2 * L)
    ctx8 = p.vector("requant", "ctx8", {"data": ctx, "mult": mult, "shift": shift}, {"relu": 0})
    p.matmul("o", ctx8, rng.integers(-128, 128, (D, D)), np.zeros(D))
    return p, L, H, dh


def test_multi_head_attention_through_views():
    """Two heads of attention read their columns of Q, K and V in place (strided views: V as
    V^T through the W stride along K) and write their context columns into one [L, D]
    tensor, which the output projection reads back."""
    p, L, H, dh = _attention_program(np.random.default_rng(11))
    D = H * dh
    run = run_program(p)
    _assert_equal(p, run)
    _same_on_verilator(p, run)
    # The views are the heads of the usual multi-head attention.
    qh, kh, vh = (p.golden[n].reshape(L, H, dh).transpose(1, 0, 2) for n in "qkv")
    assert np.array_equal(run.results["scores"].reshape(H, L, L), qh @ kh.transpose(0, 2, 1))
    pr = run.results["probs"].reshape(H, L, L)
    assert np.array_equal(run.results["ctx"], (pr @ vh).transpose(1, 0, 2).reshape(L, D))


def test_index_registers_embedding_and_cache_rows():
    """INDEX loads a token id and a step counter (advanced by the command itself) into the
    index registers; the embedding unit reads the table row, the row's scale (held for the
    whole row) and the position row they select, and a matmul writes its result into the
    cache row of the step. Corner cases: the last id and the last position; the same program
    run four times advances the step word and fills every row of the cache."""
    import torch

    from lowbit.hw.seq_program import At
    from lowbit.sw import golden_ops

    rng = np.random.default_rng(3)
    V, D, P = 5, 8, 4
    p = Program(depth=4096, max_len=64)
    d = p.descriptions["embedding"]
    ops = d.random_rows(rng, 1, D, vocab=V, n_pos=P)
    table, pos = p.put("table", ops["table"]), p.put("pos", ops["positions"])
    mult, shift = p.put("mult", ops["mult"]), p.put("shift", ops["shift"])
    token, step = p.put("token", [V - 1]), p.put("step", [0])
    w, bias = rng.integers(-128, 128, (D, D)), rng.integers(-1000, 1000, D)
    cache = p.buffer("cache", (P, D))
    p.load_index(1, token)
    p.load_index(2, step, inc=1)
    row = {"reg": 2, "shift": 3}
    x = p.vector("embedding", "x", {
        "data": At(table, (1, D), reg=1, shift=3), "pos": At(pos, (1, D), **row),
        "mult": At(mult, (1,), reg=1, hold=True), "shift": At(shift, (1,), reg=1, hold=True)},
        {"id": 0, "position": 0})
    p.matmul("y", x, w, bias, out=At(cache, (1, D), **row))
    assert p.golden["step"][0] == 1 and p.index == [V - 1, 0]
    ref = golden_ops.embedding(torch.tensor([[V - 1]]), *(torch.tensor(ops[k]) for k in (
        "table", "mult", "shift", "positions")), 0)[0].numpy()
    assert np.array_equal(p.golden["x"], ref)
    run = run_program(p)
    _assert_equal(p, run)
    _same_on_verilator(p, run)

    # Four steps of the same program on one scratchpad: tokens 0, 2, V - 1, 1 at positions
    # 0..P - 1; the host writes only the token word.
    seq = _verilated(p.max_len)
    seq.memory[:] = 0
    seq.load(p)
    ids = [0, 2, V - 1, 1]
    for i, t in enumerate(ids):
        seq.memory[token.addr] = t
        seq.start()
        want = golden_ops.embedding(torch.tensor([[t]]), *(torch.tensor(ops[k]) for k in (
            "table", "mult", "shift", "positions")), i)[0].numpy()
        assert np.array_equal(seq.read(x), want)
        assert np.array_equal(seq.read(cache)[i], want[0] @ w.T + bias)
    assert seq.read(step)[0] == len(ids)
    assert len({tuple(r) for r in seq.read(cache)}) == P


def _load_model():
    import torch

    from lowbit.sw.quant.packed import load_packed

    torch.set_num_threads(1)
    return load_packed("lowbit/models/multi30k-en-de-int8i")


def test_compiled_encoder_pass_on_verilator():
    """The compiler (sim/seq_compile.py) turns the shipped integer-only model's encoder (3
    layers: projections, attention, FFN, residuals, LayerNorms, the embedding gather) into
    one program; on the Verilated sequencer its output equals the model's own encoder output
    on a real sentence, and every tensor the program writes equals the compiled golden
    chain."""
    import torch

    from lowbit.sim.seq_compile import ModelCompiler
    from lowbit.sim.seq_harness import VerilatedSequencer

    model, tokenizer, _ = _load_model()
    ids = tokenizer.encode("A man is sleeping.", "source")
    comp = ModelCompiler(model, src_len=len(ids), max_tgt=8)
    p = comp.program
    memory = comp.encoder(ids)
    commands = p.take_commands()
    assert sum(c["op"] == 1 for c in commands) == 3 * (6 + 8) + 3 * 2   # matmuls
    seq = VerilatedSequencer(depth=p.depth, program_depth=len(commands) + 1,
                             max_len=p.max_len, score_len=p.score_len)
    seq.load(p, commands)
    cycles, per_command = seq.start()
    want = model.encode(torch.tensor([ids]))[0].numpy()
    assert np.array_equal(seq.read(memory), want)
    for name, region in p.regions.items():
        assert np.array_equal(seq.read(region), p.golden[name]), name
    # One MAC per cycle: the matmuls are most of the pass.
    macs = sum(c["rows"] * c["length"] * c["k"] for c in commands if c["op"] == 1)
    assert macs <= cycles < 1.2 * macs and len(per_command) == len(commands)
    seq.close()


@pytest.mark.slow
def test_greedy_sentence_on_sequencer():
    """A test_2016_flickr sentence ("People sit inside a train.", line 43) decoded greedily on
    the Verilated sequencer: the host writes the weights and the source ids, runs the
    encoder program, then per step writes the token id and reads the next one; the tokens
    equal lowbit.sw.decode.greedy_search on the integer-only model, the compiled step's
    golden scores equal the model's decode_step, and every scratchpad region after the
    encoder pass and the first step equals the compiled golden chain (a 4 x 16 matmul
    array)."""
    import torch

    from lowbit.sw.decode import greedy_search
    from lowbit.sim.seq_compile import ModelCompiler, sequencer_for, sequencer_greedy

    model, tokenizer, _ = _load_model()
    ids = tokenizer.encode("People sit inside a train.", "source")
    src = torch.tensor([ids])
    want = greedy_search(model, src)[0]
    comp = ModelCompiler(model, src_len=len(ids), max_tgt=8)
    comp.encoder(ids)
    comp.decoder_step()
    memory = model.encode(src)
    z = model.decode_step(torch.tensor([model.config.decoder_start_token_id]), memory,
                          model.src_mask(src), model.new_cache(), 0)
    assert np.array_equal(comp.program.golden["dec.scores"][0], z[0].numpy())
    seq = sequencer_for(comp.program, mm_rows=4, mm_cols=16)
    run = sequencer_greedy(model, ids, seq=seq, check=True)
    seq.close()
    assert run.mismatch is None
    assert run.tokens == want and len(want) >= 5
    assert np.array_equal(run.memory, memory[0].numpy())
    assert len(run.step_cycles) == len(want) + 1 and len(set(run.step_cycles)) == 1


def test_batched_decoder_step_program():
    """Three sources of different lengths compile into one decoder step program: its linear
    layers are matmuls of one row per sentence; each sentence's attention is its own commands,
    reading its own encoder output (K = its own source length) and its own block of the
    key/value cache; leaving a retired sentence out drops exactly its own commands."""
    from lowbit.hw.sequencer import OPCODES
    from lowbit.sim.seq_compile import ModelCompiler, step_commands

    model, _, _ = _load_model()
    cfg = model.config
    lens, B = [5, 9, 3], 3
    H, dh = cfg.attention_heads, cfg.d_model // cfg.attention_heads
    comp = ModelCompiler(model, src_len=lens, max_tgt=20)
    p = comp.program
    for b, n in enumerate(lens):
        comp.encoder(np.arange(4, 4 + n), sentence=b)
        p.take_commands()
    comp.decoder_step()
    step = p.take_commands()
    mm = [c for c in step if c["op"] == OPCODES["matmul"]]
    shared = [c for c in mm if "sentence" not in c]
    layers = cfg.decoder_layers
    assert len(shared) == 8 * layers + 1 and all(c["rows"] == B for c in shared)
    for b, n in enumerate(lens):
        own = [c for c in step if c.get("sentence") == b]
        qk = [c for c in own if c["op"] == OPCODES["matmul"] and c["k"] == dh]
        assert len(qk) == 2 * H * layers
        assert sorted({c["length"] for c in qk}) == sorted({n, comp.cache_len})
        for i in range(layers):
            k = p.regions[f"s{b}.dec{i}.cross.k"]
            cross = [c for c in qk if c["length"] == n][i * H:(i + 1) * H]
            assert all(k.addr <= c["src"][1] < k.addr + k.size for c in cross)
            # self-attention: sentence b's rows of the cache, one block of 4 rows per step
            cache = p.regions[f"dec{i}.k.cache"]
            own_self = [c for c in qk if c["length"] == comp.cache_len][i * H:(i + 1) * H]
            assert [c["src"][1] - cache.addr for c in own_self] == \
                [b * cfg.d_model + h * dh for h in range(H)]
            assert {c["ldw"] for c in own_self} == {4 * cfg.d_model}
        # embedding of its own token word
        assert sum(c["op"] == OPCODES["embedding"] for c in own) == 1
        rest = step_commands(step, [x for x in range(B) if x != b])
        assert len(rest) == len(step) - len(own)
        assert all(c.get("sentence") != b for c in rest)


@pytest.mark.slow
def test_batch_of_different_lengths_on_sequencer():
    """Three test_2016_flickr sources of different lengths decoded as one batch on the
    Verilated sequencer (4 x 16 array): each sentence's tokens equal greedy_search of that
    sentence alone (a batch that mixed sentences up, or their cache rows, would differ), the
    scratchpad equals the compiled golden chain after every encoder pass and the first step,
    and a finished sentence retires (later steps take fewer cycles)."""
    import torch

    from lowbit.sim.seq_compile import ModelCompiler, sequencer_for, sequencer_greedy_batch
    from lowbit.sw.decode import greedy_search

    model, tokenizer, _ = _load_model()
    sentences = ["A man is sleeping.", "Two men wearing hats are walking down a busy street "
                 "in the city.", "A dog."]
    batch = [tokenizer.encode(s, "source") for s in sentences]
    want = [greedy_search(model, torch.tensor([ids]))[0] for ids in batch]
    assert len({len(w) for w in want}) == 3 and len({len(i) for i in batch}) == 3
    seq = sequencer_for(ModelCompiler(model, src_len=1, max_tgt=1).program, mm_rows=4,
                        mm_cols=16)
    run = sequencer_greedy_batch(model, batch, seq=seq, check=True)
    seq.close()
    assert run.mismatch is None
    assert run.tokens == want
    assert len(run.step_cycles) == max(len(w) for w in want) + 1
    assert run.step_cycles[-1] < run.step_cycles[0]
    for ids, memory in zip(batch, run.memory):
        assert np.array_equal(memory, model.encode(torch.tensor([ids]))[0].numpy())


def test_batch_too_large_for_the_scratchpad():
    """Four sources of 256 tokens (the longest `lowbit cosim` passes on) do not fit one
    scratchpad together: the batch is refused with a LowbitError naming --batch-size before
    anything runs (one of them alone fits, test_longest_sentence_fits_the_sequencer)."""
    from lowbit import LowbitError
    from lowbit.sim.seq_compile import sequencer_greedy_batch

    model, _, _ = _load_model()
    cfg = model.config
    rng = np.random.default_rng(1)
    batch = []
    for _ in range(4):
        ids = rng.integers(4, cfg.vocab_size, 256)
        ids[-1] = cfg.eos_token_id
        batch.append(ids.tolist())
    with pytest.raises(LowbitError, match=r"a batch of 4 sentence\(s\) of up to 256 source "
                                          r"tokens does not fit the sequencer's scratchpad "
                                          r"\(scratchpad of 16777216 words is full at .*\): "
                                          r"use a smaller --batch-size"):
        sequencer_greedy_batch(model, batch)


def test_pack_commands_equals_layout_const():
    """The harness' command packer gives the bits of Amaranth's ``Layout.const`` for random
    commands (fixed seed) and for every field at its largest value."""
    from lowbit.hw.sequencer import DYN_FIELDS, SCALARS, SLOTS, command_layout
    from lowbit.sim.seq_harness import pack_commands

    layout = command_layout(24)
    rng = np.random.default_rng(5)

    def command(top):
        pick = (lambda bits: (1 << bits) - 1) if top else \
            (lambda bits: int(rng.integers(0, 1 << bits)))
        return {"op": pick(4), "rows": pick(16), "length": pick(16), "k": pick(16),
                "dst": pick(24), "src": [pick(24) for _ in range(SLOTS)],
                "stride": pick(SLOTS), "hold": pick(SLOTS),
                "scalar": [pick(48) for _ in range(SCALARS)],
                **{f: pick(24) for f in ("lda", "ldw", "kw", "ldd")},
                "dyn": [{"reg": pick(2), "shift": pick(5)} for _ in range(DYN_FIELDS)]}

    words = [command(True)] + [command(False) for _ in range(50)]
    got = pack_commands(layout, words)
    for w, row in zip(words, got):
        bits = layout.const(w).as_bits()
        assert [int(x) for x in row] == [(bits >> (32 * j)) & 0xFFFFFFFF
                                         for j in range(len(row))]


def _tiny_split(tmp_path, sentences):
    """A split of ``sentences`` (English; the German side is not read by the comparison)."""
    import gzip

    for lang in ("en", "de"):
        with gzip.open(tmp_path / f"tiny.{lang}.gz", "wt") as f:
            f.write("".join(s + "\n" for s in sentences))
    return ["--data-dir", str(tmp_path), "--split", "tiny"]


def _seq_cosim(capsys, *argv):
    from lowbit.cli import main

    status = main(["cosim", "--engine", "sequencer", *argv])
    out = capsys.readouterr()
    return status, out.out.strip().splitlines(), out.err.strip().splitlines()


@pytest.mark.slow
def test_cosim_on_the_sequencer_engine(tmp_path, capsys):
    """`lowbit cosim --engine sequencer --batch-size 1`: two sentences in two worker
    processes, each decoded on its own Verilated sequencer top and checked against the
    golden greedy decode; the
    table's sentence cycles are the encoder passes' and decoder steps' sum, and the command
    kinds' cycles add up to it."""
    data = _tiny_split(tmp_path, ["A man is sleeping.", "Two men wearing hats."])
    status, out, _ = _seq_cosim(capsys, "--model", "multi30k-en-de-int8i", *data,
                                "--jobs", "2", "--batch-size", "1")
    assert status == 0, out
    assert out[-1] == "identical: 2/2 sentences"
    rows = {}
    for line in out:        # name, runs, cycles, cycles per run or share
        m = re.fullmatch(r"([a-z0-9]+(?: pass| step)?)\s+(\d+)\s+([\d,]+)\s+\S+", line)
        if m:
            rows[m.group(1)] = int(m.group(2)), int(m.group(3).replace(",", ""))
    assert rows["encoder pass"][0] == rows["sentence"][0] == 2
    assert rows["decoder step"][0] >= 2 * 5
    assert rows["sentence"][1] == rows["encoder pass"][1] + rows["decoder step"][1]
    kinds = {k: v for k, v in rows.items() if k not in ("encoder pass", "decoder step",
                                                         "sentence")}
    assert {"matmul", "requant", "softmax", "layernorm", "argmax", "index"} <= set(kinds)
    assert sum(c for _, c in kinds.values()) == rows["sentence"][1]
    # one HALT fetch per program run
    assert kinds["halt"][0] == rows["encoder pass"][0] + rows["decoder step"][0]


@pytest.mark.slow
def test_sequencer_engine_reports_a_planted_fault(tmp_path, capsys):
    """With every PE product of the sequencer's matmul unit losing its bit 0 (a test-only RTL
    fault), the run stops at the first command whose result differs from the compiled golden
    chain, names it, and no sentence counts as identical."""
    data = _tiny_split(tmp_path, ["A man is sleeping."])
    status, out, _ = _seq_cosim(capsys, "--model", "multi30k-en-de-int8i", *data, "--jobs", "1",
                                "--rtl-fault", "drop-lsb")
    assert status == 1, out
    line = next(x for x in out if x.startswith("MISMATCH"))
    assert re.match(r"MISMATCH in encoder pass command #\d+ matmul at enc0\.[qkv]\.acc "
                    r".*first differing element \[\d+, \d+\]: rtl -?\d+ vs golden -?\d+", line), \
        line
    assert out[-1] == "identical: 0/1 sentences"


@pytest.mark.parametrize("argv, message", [
    (["--model", "multi30k-en-de-int8"], "--engine sequencer runs an integer-only package"),
    (["--model", "multi30k-en-de-int8i", "--beam", "2"], "decodes greedily"),
    (["--model", "multi30k-en-de-int8i", "--cols", "3"],
     "--cols must be a power of two in 1..64, not 3"),
    (["--model", "multi30k-en-de-int8i", "--ray"], "not on Ray"),
    (["--model", "multi30k-en-de-int8i", "--batch-size", "17"],
     "--batch-size 17: a decoder step of that many sentences is 1026 program words, the "
     "sequencer has 1024"),
])
def test_sequencer_engine_refuses_bad_input(tmp_path, capsys, argv, message):
    status, out, err = _seq_cosim(capsys, *argv, *_tiny_split(tmp_path, ["A dog."]))
    assert status == 2 and len(err) == 1 and err[0].startswith("lowbit: error: "), err
    assert message in err[0]


def test_longest_sentence_fits_the_sequencer():
    """The longest source `lowbit cosim` passes on (256 tokens, at its output length limit)
    compiles into the scratchpad of sequencer_for's sequencer, and its encoder and decoder
    step programs fit its program memory."""
    import torch

    from lowbit.sim.seq_compile import DEPTH, PROGRAM_DEPTH, ModelCompiler
    from lowbit.sw.decode import DecodeOptions, max_lengths

    model, _, _ = _load_model()
    cfg = model.config
    ids = np.random.default_rng(0).integers(4, cfg.vocab_size, 256)
    ids[-1] = cfg.eos_token_id
    limit = max_lengths(torch.from_numpy(ids)[None], cfg.pad_token_id, DecodeOptions(),
                        cfg.max_position_embeddings)[0]
    comp = ModelCompiler(model, src_len=len(ids), max_tgt=limit)
    comp.encoder(ids)
    encoder = comp.program.take_commands()
    comp.decoder_step()
    step = comp.program.take_commands()
    assert comp.program.top <= DEPTH == comp.program.depth
    assert max(len(encoder), len(step)) + 1 <= PROGRAM_DEPTH
