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


def test_charts_tell_apart_at_most_a_palette_of_groups():
    """A hostile-input pass: Explore coloured 20,000 cells by a per-cell barcode column, one
    plotly trace per value (a 7.8 MB figure, 45 s per draw). The largest groups are drawn, the
    rest as one 'other' group, and the title says so; a column within the palette is untouched."""
    n = 20_000
    rng = np.random.default_rng(0)
    barcodes = pd.Categorical([f"BC{i:06d}" for i in range(n)])
    big = np.where(np.arange(n) < 5_000, "T cell", barcodes.astype(str))  # one large group
    text, merged = figures.few_groups(big)
    assert merged == n - 5_000 - (figures.MAX_GROUPS - 2)
    assert (text == "T cell").sum() == 5_000
    assert len(set(text)) == figures.MAX_GROUPS
    fig = figures.embedding(rng.normal(size=(n, 2)), barcodes, "barcode", "UMAP")
    assert len(fig.data) <= figures.MAX_GROUPS
    assert f"{n - figures.MAX_GROUPS + 1:,} more as 'other'" in fig.layout.title.text
    other = next(t for t in fig.data if t.name.startswith("other ("))
    assert other.marker.color == figures.OTHER_COLOUR
    boxes = figures.group_boxes(rng.normal(size=n), barcodes, "barcode", "score", "Scores")
    assert len([t for t in boxes.data if t.type == "box"]) == figures.MAX_GROUPS
    violins = figures.qc_violins(pd.DataFrame({"total_counts": rng.random(n)}), "bc", barcodes)
    assert len(violins[0].data) == figures.MAX_GROUPS
    assert "more as 'other'" in violins[0].layout.title.text
    few = pd.Series(["a", "b", None] * 10)
    text, merged = figures.few_groups(few)
    assert merged == 0 and set(text) == {"a", "b", "None"}


def test_names_that_look_like_numbers_stay_names_on_every_axis():
    """A browser pass: QC violins split by donor (1015, 1016, 1244, 1256, 1488) were drawn on a
    number line from 1100 to 1400, each violin a thin line, two on top of each other."""
    rng = np.random.default_rng(0)
    donors = pd.Series(rng.choice(["1015", "1016", "1244", "1256", "1488"], 300))
    violins = figures.qc_violins(pd.DataFrame({"total_counts": rng.random(300)}), "donor", donors)
    boxes = figures.group_boxes(rng.random(300), donors, "donor", "score", "Scores")
    cm = figures.confusion([[3, 1], [0, 4]], ["0", "10"])
    f1 = figures.per_class_f1({"0": 0.0, "10": 0.9})
    for fig in (*violins, boxes, cm, f1):
        assert fig.layout.xaxis.type == "category"
    assert cm.layout.yaxis.type == "category"
    assert f1.data[0].texttemplate == "%{y:.2f}"  # an F1 of 0 reads 0.00, not an empty slot
    assert [t.name for t in violins[0].data] == ["1015", "1016", "1244", "1256", "1488"]


def test_overlaid_curves_give_each_model_one_colour_and_each_seed_a_dash():
    """Three seeds of two models read as six unrelated lines when each run had its own colour."""
    df = pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [3.0, 2.0, 1.5]})
    names = [f"{m} · seed {s}" for m in ("mlp", "logreg") for s in (0, 1, 2)]
    fig = figures.overlaid_curves(
        {n: df for n in names}, "val_loss", {n: n.split(" ")[0] for n in names}
    )
    lines = {t.name: (t.line.color, t.line.dash) for t in fig.data}
    assert len({lines[n][0] for n in names[:3]}) == 1  # one model, one colour
    assert lines["mlp · seed 0"][0] != lines["logreg · seed 0"][0]
    assert len({lines[n][1] for n in names[:3]}) == 3  # its seeds told apart by the dash
    plain = figures.overlaid_curves({n: df for n in names[:2]}, "val_loss")  # no groups
    assert plain.data[0].line.color != plain.data[1].line.color


def test_deg_violins_draw_every_cell_of_a_small_group():
    """A browser pass: a control group with most cells at 0 drew a spike at 0 as wide as the
    violin, and the rest of it as a thin line; each cell is a point where there are few."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "gene": np.repeat(["Reg3b", "Ang4"], 60),
            "condition": np.tile(np.repeat(["ctrl", "stim"], 30), 2),
            "expression": np.where(rng.random(120) < 0.7, 0.0, rng.gamma(2, 1, 120)),
        }
    )
    fig = figures.deg_violins(df, ["Reg3b", "Ang4"], "condition", ["ctrl", "stim"])
    assert [t.points for t in fig.data] == ["all", "all"]
    many = pd.concat([df] * 20, ignore_index=True)  # 600 cells a gene and group: no points
    assert figures.MAX_VIOLIN_POINTS < 600
    fig = figures.deg_violins(many, ["Reg3b", "Ang4"], "condition", ["ctrl", "stim"])
    assert [t.points for t in fig.data] == [False, False]


def test_cytometry_variables_are_markers_not_genes():
    """A browser pass: a 23-marker CytOF panel read as '23 genes' on Data, Explore, Preprocess
    and Results. Intensities (raw or arcsinh, in X or a layer) or an arcsinh step: markers."""
    assert figures.feature_noun({"x_kind": "raw intensities"}) == "marker"
    assert figures.feature_noun({"x_kind": "counts", "layers": {"a": "arcsinh-transformed"}}) == (
        "marker"
    )
    minmax = {"x_kind": "scaled (MinMax)", "recipe": '{"steps": [{"name": "arcsinh"}]}'}
    assert figures.feature_noun(minmax) == "marker"
    assert figures.feature_noun({"x_kind": "counts", "recipe": "not json"}) == "gene"
    assert figures.feature_noun({}) == "gene"


def test_loss_axis_ends_at_the_last_epoch():
    """A browser pass: plotly's padding ran the loss plot's axis past the last epoch, as if more
    epochs were to come; a one-epoch curve still gets an axis around its one point."""
    metrics = pd.DataFrame(
        {"epoch": [1, 2, 3, 4], "train_loss": [4.0, 3.0, 2.0, 1.0], "val_loss": [5, 4, 3, 2.0]}
    )
    fig = figures.loss_curves(metrics, best_epoch=4)
    assert tuple(fig.layout.xaxis.range) == (1, 4)
    assert all(t.cliponaxis is False for t in fig.data)  # the end markers drawn whole
    one = figures.loss_curves(metrics.head(1))
    assert tuple(one.layout.xaxis.range) == (0.5, 1.5)
    long = pd.DataFrame({"epoch": range(1, 31), "val_loss": np.linspace(3, 1, 30)})
    over = figures.overlaid_curves({"a": long, "b": long.head(20)}, "val_loss")
    assert tuple(over.layout.xaxis.range) == (1, 30) and over.layout.xaxis.dtick is None


def test_the_best_epoch_label_and_the_last_tick_have_room():
    """A browser pass: at the last epoch the 'best epoch 10 (weights kept)' label ran into the
    legend ('best epoch 10 (weigh...'), and on Compare the last epoch's tick was cut at the
    figure's edge."""
    metrics = pd.DataFrame(
        {
            "epoch": range(1, 11),
            "train_loss": np.linspace(2, 0.3, 10),
            "val_loss": np.linspace(2, 0.6, 10),
        }
    )
    late = figures.loss_curves(metrics, best_epoch=10).layout.annotations[0]
    early = figures.loss_curves(metrics, best_epoch=2).layout.annotations[0]
    assert late.xanchor == "right" and early.xanchor == "left"
    assert figures.overlaid_curves({"a": metrics}, "val_loss").layout.margin.r >= 30
