"""The figures of docs/results.md, one per question, drawn from the measured records.

* :func:`quality_figure` -- how much BLEU each scheme loses at how many bits, next to what each
  paper claimed (two panels: test_2016_flickr, test_2017_flickr);
* :func:`size_figure` -- model size against BLEU, with the Pareto front of the shipped packages;
* :func:`cosim_figure` -- where co-simulation's simulated cycles and CPU time go, per package.

Every function returns a matplotlib ``Figure`` (nothing is written here), so tests can inspect
the figure -- labelled axes, a legend, no label overlapping another -- before it is saved.
Rendering is deterministic (Agg, fixed sizes, no timestamps), so a committed PNG can be compared
byte for byte with a fresh one.
"""

from __future__ import annotations

import io
import re

SPLITS = ("test_2016_flickr", "test_2017_flickr")

# One marker and colour per scheme family; a family is the scheme's leading letters.
FAMILIES = {
    "fp": ("FP32", "o", "#444444"),
    "int": ("INT (Wu et al.)", "s", "#1f77b4"),
    "log": ("log, power of two (Aji & Heafield)", "D", "#d62728"),
    "mixed": ("binary-coding mixed (Chung et al.)", "^", "#2ca02c"),
    "bmt": ("1-bit BMT (Zhang et al.)", "v", "#9467bd"),
}

# What the papers claimed, as (label, family, bits per weight, low, high) where low..high is the
# claimed BLEU change against the paper's own FP32 model (negative = lost). Relative claims are
# marked with "%" and scaled to our FP32 score per panel.
CLAIMS = (
    # Aji & Heafield 2020, WMT17 En-De Transformer, FP32 35.66 (log codes with error feedback)
    ("Aji 4-bit", "log", 4.0, 35.47 - 35.66, 35.47 - 35.66),
    ("Aji 3-bit", "log", 3.0, 34.95 - 35.66, 34.95 - 35.66),
    ("Aji 2-bit", "log", 2.0, 33.40 - 35.66, 33.40 - 35.66),
    ("Aji 1-bit", "log", 1.0, 29.43 - 35.66, 29.43 - 35.66),
    # Chung et al. 2020: about 2.6 bits per weight, less than 0.5 BLEU lost
    ("Chung 2.6-bit", "mixed", 2.6, -0.5, 0.0),
    # Zhang et al. 2023 (BMT): 1-bit weights match float at 16x smaller (32/16 = 2 bits/weight)
    ("BMT 16x", "bmt", 2.0, 0.0, 0.0),
    # Wu et al. 2020: all matmuls INT8, 99.3-100 % of FP32 BLEU
    ("Wu INT8 %", "int", 8.0, -0.7, 0.0),
)


Y_FLOOR = -8.0       # BLEU change below which points sit on the axis' floor, marked off scale


def family(scheme: str) -> str:
    name = re.match(r"[a-z]+", scheme or "").group(0) if re.match(r"[a-z]+", scheme or "") else ""
    return name if name in FAMILIES else "fp"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(model: str) -> str:
    """A shipped package's label: its suffix after the FP32 model's name."""
    if model.startswith("multi30k-en-de-"):
        return model[len("multi30k-en-de-"):]
    return "fp32" if model.startswith("multi30k-en-de") else model


# ---------------------------------------------------------------------------------------------
# Label placement: each label takes the first offset around its point where it overlaps no
# label placed before it and stays inside the axes.

_OFFSETS = ((6, 4, "left", "bottom"), (6, -4, "left", "top"), (-6, 4, "right", "bottom"),
            (-6, -4, "right", "top"), (0, 9, "center", "bottom"), (0, -9, "center", "top"),
            (14, 10, "left", "bottom"), (14, -10, "left", "top"), (-14, 10, "right", "bottom"),
            (-14, -10, "right", "top"), (0, 18, "center", "bottom"), (0, -18, "center", "top"),
            (24, 0, "left", "center"), (-24, 0, "right", "center"))
_OFFSETS = _OFFSETS + tuple((2 * dx, 2 * dy, ha, va) for dx, dy, ha, va in _OFFSETS[4:]) + tuple(
    (3 * dx, 3 * dy, ha, va) for dx, dy, ha, va in _OFFSETS[4:])


def place_labels(ax, items, fontsize=7, markers=()) -> None:
    """``items``: ``(x, y, text, style)`` in data coordinates; ``style`` is a dict of Text
    properties. Labels avoid each other and the ``markers`` (data points); a label that fits
    nowhere is placed at its first offset."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed = [t.get_window_extent(renderer) for t in ax.texts]
    for x, y in markers:
        px, py = ax.transData.transform((x, y))
        placed.append(Bbox([[px - 5, py - 5], [px + 5, py + 5]]))
    for x, y, text, style in items:
        chosen = None
        for dx, dy, ha, va in _OFFSETS:
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha,
                            va=va, fontsize=fontsize, **style)
            box = t.get_window_extent(renderer)
            inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0
                      and box.y1 <= frame.y1)
            if inside and not any(box.overlaps(p) for p in placed):
                chosen = box
                break
            t.remove()
        if chosen is None:
            dx, dy, ha, va = _OFFSETS[0]
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha,
                            va=va, fontsize=fontsize, **style)
            chosen = t.get_window_extent(renderer)
        placed.append(chosen)


def overlapping_labels(fig) -> list[tuple[str, str]]:
    """Pairs of texts (annotations) in one axes of ``fig`` whose boxes overlap."""
    renderer = fig.canvas.get_renderer()
    pairs = []
    for ax in fig.axes:
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts if t.get_text()]
        for i, (a, ba) in enumerate(boxes):
            for b, bb in boxes[i + 1:]:
                if ba.overlaps(bb):
                    pairs.append((a, b))
    return pairs


# ---------------------------------------------------------------------------------------------
# Figures


def _family_handles(plt, with_fp32: bool) -> list:
    """Legend entries: one marker per scheme family (shipped packages), and the faint one of
    the other candidates."""
    return [plt.Line2D([], [], marker=m, ls="", color=c, mec="black", mew=0.6, label=n)
            for key, (n, m, c) in FAMILIES.items() if with_fp32 or key != "fp"] + [
        plt.Line2D([], [], marker="o", ls="", color="#888888", alpha=0.3,
                   label="other candidates (not shipped)")]


def _finish_layout(fig, panels) -> None:
    """Lay the figure out first, then place each panel's labels (placement works in pixels,
    which the layout would move)."""
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.canvas.draw()
    for ax, labels, markers in panels:
        place_labels(ax, sorted(labels, key=lambda t: (-t[1], t[0])), markers=markers)


def _reference(rows):
    return next((r for r in rows if r["scheme"] == "fp32" and not r.get("retrained")), None)


def _is_shipped(row) -> bool:
    return row["model"].startswith("multi30k-en-de")


def quality_figure(rows: list[dict]):
    """BLEU change against the FP32 model vs bits per weight, one panel per test split."""
    plt = _plt()
    ref = _reference(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6), dpi=100, sharex=True)
    panels = []
    for ax, split in zip(axes, SPLITS):
        f = ref.get(split) if ref else None
        if f is None:
            continue
        ax.axhline(0.0, color="#444444", lw=1, ls="--", zorder=1)
        labels, markers = [], []
        floor = Y_FLOOR
        for r in rows:
            b, bits = r.get(split), r.get("bits_per_weight")
            if b is None or bits is None or r is ref:
                continue
            name, marker, colour = FAMILIES[family(r["scheme"])]
            y = max(b - f, floor + 0.3)       # off-scale points sit on the floor, labelled
            if _is_shipped(r):
                ax.scatter([bits], [y], marker=marker, s=46, color=colour, zorder=3,
                           edgecolor="black", linewidth=0.6)
                off = " (off scale)" if b - f < floor + 0.3 else ""
                labels.append((bits, y, f"{_short(r['model'])} {b - f:+.2f}{off}",
                               {"color": colour}))
                markers.append((bits, y))
            else:
                ax.scatter([bits], [y], marker=marker, s=18, color=colour, alpha=0.25,
                           zorder=2, linewidth=0)
        for label, fam, bits, low, high in CLAIMS:
            name, marker, colour = FAMILIES[fam]
            scale = f / 100 if label.endswith("%") else 1.0
            low, high = low * scale, high * scale
            mid = (low + high) / 2
            ax.errorbar([bits], [mid], yerr=[[mid - low], [high - mid]] if high > low else None,
                        fmt=marker, ms=7, mfc="white", mec=colour, ecolor=colour, capsize=3,
                        zorder=2.5)
            text = label.replace(" %", "") + (" (<)" if fam == "mixed" else "")
            labels.append((bits, mid, text, {"color": colour, "style": "italic"}))
            markers.append((bits, mid))
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16, 32], labels=["1", "2", "4", "8", "16", "32"])
        ax.set_xlim(0.75, 48)
        lows = [t[1] for t in labels] + [0.0]
        ax.set_ylim(max(min(lows) - 1.0, floor), max(max(lows) + 1.2, 1.5))
        ax.set_xlabel("bits per weight (whole model)")
        ax.set_ylabel(f"BLEU vs FP32 ({f:.2f}), higher is better")
        ax.set_title(split)
        ax.grid(True, alpha=0.3)
        panels.append((ax, labels, markers))
    handles = _family_handles(plt, with_fp32=False) + [
        plt.Line2D([], [], marker="o", ls="", mfc="white", mec="#444444",
                   label="paper's claim (its own test set)"),
        plt.Line2D([], [], ls="--", color="#444444", label="FP32 model")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle("Multi30k En-De, beam 5: BLEU lost by each scheme against the bits it keeps",
                 fontsize=10)
    _finish_layout(fig, panels)
    return fig


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points ``(size, bleu, name)`` no other point beats on both (smaller and better),
    ordered by size."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front


def size_figure(rows: list[dict]):
    """BLEU vs package size (log scale), the Pareto front of the shipped packages."""
    plt = _plt()
    ref = _reference(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.0), dpi=100, sharex=True)
    panels = []
    for ax, split in zip(axes, SPLITS):
        shipped, labels = [], []
        top = max((r.get(split) or 0.0) for r in rows)
        floor = (ref[split] if ref is not None and ref.get(split) is not None
                 else top - 1.0) + Y_FLOOR
        for r in rows:
            b, size = r.get(split), r.get("size_bytes")
            if b is None or not size:
                continue
            mib = size / 2 ** 20
            name, marker, colour = FAMILIES[family(r["scheme"])]
            y = max(b, floor + 0.3)       # off-scale points sit on the floor, labelled
            if _is_shipped(r):
                ax.scatter([mib], [y], marker=marker, s=46, color=colour, edgecolor="black",
                           linewidth=0.6, zorder=3)
                shipped.append((mib, b, _short(r["model"])))
                off = f" ({b:.2f}, off scale)" if b < floor + 0.3 else ""
                labels.append((mib, y, f"{_short(r['model'])} {mib:.2f} MiB{off}",
                               {"color": colour}))
            else:
                ax.scatter([mib], [y], marker=marker, s=18, color=colour, alpha=0.25,
                           linewidth=0, zorder=2)
        front = pareto_front(shipped)
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black",
                    lw=1, alpha=0.6, zorder=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16, 32], labels=["1", "2", "4", "8", "16", "32"])
        ax.minorticks_off()
        ax.set_xlabel("package size (MiB, log scale)")
        ax.set_ylabel("BLEU (sacreBLEU, beam 5)")
        ax.set_title(split)
        ax.grid(True, which="both", alpha=0.3)
        ys = [p[1] for p in labels]
        if ys:
            ax.set_ylim(max(min(ys) - 1.0, floor), max(ys) + 1.5)
        ax.set_xlim(0.7, 64)
        panels.append((ax, labels, [(p[0], p[1]) for p in labels]))
    handles = _family_handles(plt, with_fp32=True) + [
        plt.Line2D([], [], color="black", alpha=0.6, label="Pareto front of the shipped packages")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle("Multi30k En-De: quality against size (smaller and higher is better)",
                 fontsize=10)
    _finish_layout(fig, panels)
    return fig


def cosim_figure(runs: list[dict]):
    """Stacked bars per co-simulated package: simulated cycles (useful vs stalled) and CPU time
    (RTL simulation, packing, golden kernels, the rest of the host decode)."""
    plt = _plt()
    runs = sorted(runs, key=lambda r: r["scheme"])
    names = [f"{r['scheme']} ({r['checked']} sent.)" for r in runs]
    fig, (ax_c, ax_t) = plt.subplots(1, 2, figsize=(10.5, 3.2 + 0.3 * len(runs)), dpi=100)
    ideal = [r["ideal_cycles"] / 1e9 for r in runs]
    stall = [(r["cycles"] - r["ideal_cycles"]) / 1e9 for r in runs]
    y = list(range(len(runs)))
    ax_c.barh(y, ideal, color="#1f77b4", label="MACs / array size (ideal cycles)")
    ax_c.barh(y, stall, left=ideal, color="#ff7f0e", label="fill, drain and stalls")
    ax_c.set_yticks(y, labels=names)
    ax_c.set_xlabel("simulated cycles (billions)")
    ax_c.set_ylabel("shipped package")
    ax_c.set_title("where the simulated cycles go")
    ax_c.legend(fontsize=7, loc="lower right")
    parts = {"RTL simulation (Verilator)": [], "beat packing": [], "golden kernels": [],
             "host decode and the rest": []}
    for r in runs:
        cpu = r["seconds"] * r.get("jobs", 1)
        sim = sum(u.get("sim_seconds", 0.0) for u in r["units"])
        pack = sum(u.get("pack_seconds", 0.0) for u in r["units"])
        gold = sum(u.get("golden_seconds", 0.0) for u in r["units"])
        for key, v in zip(parts, (sim, pack, gold, max(cpu - sim - pack - gold, 0.0))):
            parts[key].append(v / 60)
    left = [0.0] * len(runs)
    for (key, values), colour in zip(parts.items(), ("#1f77b4", "#ff7f0e", "#2ca02c", "#999999")):
        ax_t.barh(y, values, left=left, color=colour, label=key)
        left = [a + b for a, b in zip(left, values)]
    ax_t.set_yticks(y, labels=names)
    ax_t.set_xlabel("CPU time (minutes, summed over worker processes)")
    ax_t.set_ylabel("shipped package")
    ax_t.set_title("where the co-simulation's time goes")
    ax_t.legend(fontsize=7, loc="lower right")
    fig.suptitle("Co-simulation of test_2016_flickr, greedy, every quantized matmul on RTL",
                 fontsize=10)
    fig.tight_layout()
    return fig


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes, without metadata that would change between runs."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()
