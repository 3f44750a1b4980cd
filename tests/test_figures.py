"""ui.figures: what the figures draw."""

import re

import numpy as np
import pandas as pd

from ui import figures


def test_qc_violins_end_at_the_data():
    """Counts per cell are never below 0: the violins' density stops at the smallest value (a
    browser pass saw them reach below 0)."""
    qc = pd.DataFrame({"n_genes_by_counts": [5, 50, 500, 5000], "total_counts": [9, 90, 900, 9e3]})
    for fig in figures.qc_violins(qc, None):
        assert all(t.spanmode == "hard" for t in fig.data)


def test_exported_figures_carry_real_colours():
    """With Streamlit imported, plotly's default template is Streamlit's, whose colours are
    placeholders (#000001, ...) that only the page replaces: exported loss curves drew train and
    validation both black, and an exported UMAP every group black."""
    import streamlit  # noqa: F401 - what the app imports: its template becomes the default

    metrics = pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.0], "val_loss": [2.5, 1.5]})
    groups = np.array([str(i % 11) for i in range(200)])
    for fig in (
        figures.loss_curves(metrics),
        figures.embedding(np.random.default_rng(0).random((200, 2)), groups, "louvain", "UMAP"),
        figures.group_boxes(np.arange(200.0), groups, "louvain", "score", "boxes"),
    ):
        html = figures.for_export(fig).to_html(include_plotlyjs=False)
        assert not re.search(r"#0000(0[1-9]|1\d)\b", html), fig.layout.title.text
    curves = figures.loss_curves(metrics)
    assert len({t.line.color for t in curves.data}) == 2


def test_groups_keep_one_colour_across_charts_in_natural_order():
    groups = np.array([str(i % 11) for i in range(220)])
    umap = figures.embedding(np.random.default_rng(0).random((220, 2)), groups, "louvain", "UMAP")
    boxes = figures.group_boxes(np.arange(220.0), groups, "louvain", "score", "boxes")
    in_umap = {t.name: t.marker.color for t in umap.data}
    in_boxes = {t.name: t.marker.color for t in boxes.data if t.type == "box"}
    assert in_umap == in_boxes and len(set(in_umap.values())) == 11  # 11 groups, 11 colours
    assert [t.name for t in umap.data] == [str(i) for i in range(11)]  # 0, 1, ..., 10
    assert [t.name for t in boxes.data if t.type == "box"] == [str(i) for i in range(11)]


def test_qc_violins_split_by_a_column_named_like_a_qc_metric():
    """An obs column called 'total_counts' (lo/mid/hi) chosen as the split replaced the QC
    column: the counts violin plotted the words."""
    qc = pd.DataFrame({"n_genes_by_counts": [5, 50, 500, 60], "total_counts": [9, 90, 900, 95]})
    figs = figures.qc_violins(qc, "total_counts", np.array(["lo", "mid", "hi", "mid"]))
    counts = next(f for f in figs if f.layout.yaxis.title.text == "Counts per cell")
    ys = np.concatenate([np.asarray(t.y, dtype=float) for t in counts.data])
    assert sorted(ys) == [9, 90, 95, 900]
    assert {str(x) for t in counts.data for x in t.x} == {"lo", "mid", "hi"}


def test_colours_agree_with_missing_values_in_a_categorical_column():
    """Boxes took colours from the groups they drew (missing cells dropped), the UMAP from
    every value ('nan' included): the same cluster changed colour between the two."""
    groups = pd.Categorical([None if i % 13 == 0 else str(i % 10) for i in range(260)])
    umap = figures.embedding(np.random.default_rng(1).random((260, 2)), groups, "c", "UMAP")
    boxes = figures.group_boxes(np.arange(260.0), groups, "c", "score", "boxes")
    in_umap = {t.name: t.marker.color for t in umap.data}
    in_boxes = {t.name: t.marker.color for t in boxes.data if t.type == "box"}
    assert "nan" in in_umap and in_boxes.items() <= in_umap.items()
