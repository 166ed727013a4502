"""docs/results.md, its figures and the README's table are what `lowbit report` makes of the
committed records (no stale figure), and the figures are readable: labelled axes, a legend, no
label on top of another."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lowbit.sw.quant.figures import overlapping_labels, pareto_front, place_labels
from lowbit.sw.quant.report import (FIGURES, README_BEGIN, README_END, build_rows, draw_figures,
                                    read_cosim_runs, read_results, write_report)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    from lowbit.hw.fpga_render import report_section

    out = tmp_path_factory.mktemp("report")
    shutil.copy(ROOT / "README.md", out / "README.md")
    write_report(ROOT / "docs" / "results.json", out, sections=[report_section(ROOT / "docs")],
                 bench_dir=ROOT / "bench", readme=out / "README.md")
    return out


def _section(text: str) -> str:
    return text.split(README_BEGIN, 1)[1].split(README_END, 1)[0]


def test_results_md_is_fresh(fresh):
    assert (fresh / "results.md").read_text() == (ROOT / "docs" / "results.md").read_text()


@pytest.mark.parametrize("name", FIGURES)
def test_committed_figure_is_fresh(fresh, name):
    assert (fresh / name).read_bytes() == (ROOT / "docs" / name).read_bytes(), (
        f"docs/{name} is stale: run `lowbit report`")


def test_readme_table_is_fresh(fresh):
    committed = (ROOT / "README.md").read_text()
    assert _section((fresh / "README.md").read_text()) == _section(committed)
    assert "multi30k-en-de-int8" in _section(committed)


def test_figures_are_readable():
    rows = build_rows(read_results(ROOT / "docs" / "results.json"), 5)
    figs = draw_figures(rows, read_cosim_runs(ROOT / "bench"))
    assert set(figs) == set(FIGURES)
    for name, fig in figs.items():
        assert fig.legends or any(ax.get_legend() for ax in fig.axes), name
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel(), name
        assert overlapping_labels(fig) == [], name


def test_quality_figure_shows_every_shipped_package_and_the_claims():
    rows = build_rows(read_results(ROOT / "docs" / "results.json"), 5)
    fig = draw_figures(rows, [])[FIGURES[0]]
    texts = [t.get_text() for t in fig.axes[0].texts]
    for row in rows:
        if row["model"].startswith("multi30k-en-de-"):
            short = row["model"][len("multi30k-en-de-"):]
            assert any(t.startswith(short + " ") for t in texts), short
    for claim in ("Aji 4-bit", "Aji 1-bit", "Chung 2.6-bit", "BMT 16x", "Wu INT8"):
        assert any(t.startswith(claim) for t in texts), claim


def test_pareto_front():
    pts = [(1.0, 30.0, "a"), (2.0, 29.0, "b"), (4.0, 31.0, "c"), (8.0, 31.0, "d"),
           (8.0, 35.0, "e"), (0.5, 10.0, "f")]
    assert [p[2] for p in pareto_front(pts)] == ["f", "a", "c", "e"]
    assert pareto_front([]) == []


def test_labels_avoid_each_other_in_a_cluster():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    items = [(5 + 0.1 * i, 5 + 0.1 * (i % 3), f"label number {i}", {}) for i in range(8)]
    fig.canvas.draw()
    place_labels(ax, items)
    assert len(ax.texts) == 8
    assert overlapping_labels(fig) == []
    plt.close(fig)
