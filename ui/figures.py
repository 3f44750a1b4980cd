"""Plotly figures labelled with the data's own names; each says when it shows a sample."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

import natsort
import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from engine import metric_names
from engine.io import dense

MAX_POINTS = 20_000
# Real colours, not the template's: with Streamlit imported, plotly's default template is
# Streamlit's, whose colorway is placeholders (#000001, #000002, ...) that only the page
# replaces, so exported figures (PNG, HTML) drew every group black.
FEW_COLOURS = px.colors.qualitative.D3  # up to 10 groups
MANY_COLOURS = px.colors.qualitative.Dark24 + px.colors.qualitative.Light24  # up to 48
px.defaults.color_discrete_sequence = FEW_COLOURS
EXPORT_TEMPLATE = "plotly_white"


# digit runs read as numbers: clusters 0, 1, 2, ..., 10 (not 0, 1, 10, 2), as scanpy orders them
natural_key = natsort.natsort_keygen(alg=natsort.ns.IGNORECASE)


def observed(values: object) -> list[str]:
    """The distinct values of a column as text, missing ones as 'nan' (as charts label them);
    a categorical column answers from its codes (a million cells: no text per cell)."""
    s = pd.Series(values) if not isinstance(values, pd.Series) else values
    if isinstance(s.dtype, pd.CategoricalDtype):
        codes = np.unique(s.cat.codes.to_numpy())
        return [str(s.cat.categories[c]) if c >= 0 else "nan" for c in codes]
    return [str(v) for v in pd.unique(s.astype(object).to_numpy())]


def category_colours(values: object) -> dict[str, str]:
    """One colour per category, in natural order, the same in every chart of the same column
    (the Results page coloured one cluster blue in a box plot and red in the UMAP): both charts
    take the colours of the whole column. Beyond 10 groups a 48-colour palette, so that no two
    of them share a colour below that."""
    cats = sorted(set(observed(values)), key=natural_key)
    pal = FEW_COLOURS if len(cats) <= len(FEW_COLOURS) else MANY_COLOURS
    return {c: pal[i % len(pal)] for i, c in enumerate(cats)}


MAX_GROUPS = len(MANY_COLOURS)  # groups a chart tells apart; beyond, the largest and "other"
OTHER_COLOUR = "#bdbdbd"


def few_groups(values: object, limit: int = MAX_GROUPS) -> tuple[np.ndarray, int]:
    """The values as text, all groups but the ``limit - 1`` largest merged into one named
    'other (N groups)', and how many groups were merged (0: none). A column of per-cell
    barcodes drew 20,000 traces (a 7.8 MB figure, 45 s per draw); no chart tells more groups
    than its palette's colours apart."""
    s = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    text = s.reset_index(drop=True).astype(str)  # missing values as text, as charts label them
    counts = text.value_counts(sort=False)
    if len(counts) <= limit:
        return text.to_numpy(dtype=object), 0
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], natural_key(kv[0])))
    keep = [k for k, _ in ranked[: limit - 1]]
    merged = len(counts) - len(keep)
    other = f"other ({merged:,} groups)"
    return text.where(text.isin(keep), other).to_numpy(dtype=object), merged


def merged_note(merged: int, limit: int = MAX_GROUPS) -> str:
    """Words for a title whose groups ``few_groups`` merged."""
    return f" (the {limit - 1} largest groups; {merged:,} more as 'other')" if merged else ""


def for_export(fig: go.Figure) -> go.Figure:
    """A copy of ``fig`` on a plain template: what the page draws, outside Streamlit."""
    return go.Figure(fig).update_layout(template=EXPORT_TEMPLATE)


MAX_HEATMAP_CELLS = 500
MAX_HEATMAP_GENES = 50


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&=\"'^%@])")


def values_noun(kind: str) -> str:
    """' values' after a matrix kind that needs it: 'counts values' no, 'log-normalised values'
    yes, 'raw intensities' as it is."""
    return "" if str(kind).endswith(("values", "intensities", "counts")) else " values"


CYTOMETRY_KINDS = ("raw intensities", "arcsinh-transformed")


def feature_noun(description: dict) -> str:
    """What a dataset's variables are called: 'marker' for cytometry (intensities, raw or
    arcsinh-transformed, in X or a layer, or an arcsinh step in its recipe), else 'gene' (a
    23-marker CytOF panel read as '23 genes' on every page: a browser pass)."""
    from engine import preprocess as pp  # (engine.defaults cannot: preprocess imports it)

    layers = description.get("layers")
    kinds = [description.get("x_kind"), *(layers.values() if isinstance(layers, dict) else [])]
    kinds = [k for k in kinds if isinstance(k, str)]  # a hand-edited record: no error here
    steps = [s["name"] for s in pp.recipe_steps(description.get("recipe"))]
    return "marker" if set(kinds) & set(CYTOMETRY_KINDS) or "arcsinh" in steps else "gene"


def esc(text: object) -> str:
    """``text`` (a run id, dataset name, layer key, class label...) safe inside st.markdown,
    st.caption, st.error, widget labels: every markdown/HTML character is backslash-escaped, so
    it shows as typed and never becomes bold text, a link, an image, a colour or a formula."""
    flat = " ".join(str(text).split())  # no line breaks: no headings, lists or tables
    return _MD_SPECIAL.sub(r"\\\1", flat)


def plain(text: object) -> str:
    """``text`` safe in a plotly title, axis or legend (plotly reads <a>, <b>... as HTML)."""
    return html.escape(str(text), quote=False)


def show(
    name: str,
    build: Callable[[], go.Figure],
    figs: dict | None = None,
    where=None,
    what: str | None = None,
) -> go.Figure | None:
    """Build a figure and draw it; on any failure, one line instead (a figure never breaks a page).

    The figure is kept in ``figs[name]`` (for the export menu) when it was drawn.
    """
    import streamlit as st

    where = where or st
    try:
        fig = build()
        where.plotly_chart(fig, width="stretch", key=f"fig-{name}")
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where.warning(f"Could not draw {esc(what or name.replace('_', ' '))}: {esc(first)}")
        return None
    if figs is not None:
        figs[name] = fig
    return fig


def sample_index(n: int, limit: int, seed: int = 0) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def sampled_title(title: str, shown: int, total: int) -> str:
    return title if shown == total else f"{title} (random sample of {shown:,} of {total:,} cells)"


def loss_curves(
    metrics: pd.DataFrame, title: str = "Loss per epoch", best_epoch: int | None = None
) -> go.Figure:
    """Training and validation loss per epoch; ``best_epoch`` (the weights the run kept) is
    marked with a dotted line."""
    cols = [c for c in ("train_loss", "val_loss") if c in metrics]
    if metrics.empty:
        fig = go.Figure().update_layout(title="No epoch finished yet")
        # no axes at all: an empty chart drew meaningless -1..5 scales
        return fig.update_xaxes(visible=False).update_yaxes(visible=False)
    if not cols:  # a scikit-learn baseline: fitted in one step, scored on train and validation
        scores = metrics.drop(columns=["epoch"]).iloc[-1]
        fig = px.bar(  # readable names: the bars read 'train_mse', 'val_mse'
            x=[plain(metric_names.name(k)) for k in scores.index],
            y=list(scores.to_numpy()),
            labels={"x": "", "y": "value"},
        )
        return fig.update_layout(
            title="Fitted in one step (no epochs): training and validation scores"
        )
    long = metrics.melt(id_vars="epoch", value_vars=cols, var_name="split", value_name="loss")
    long["split"] = long["split"].map({"train_loss": "train", "val_loss": "validation"})
    fig = _whole_epochs(
        px.line(long, x="epoch", y="loss", color="split", markers=True, title=title),
        metrics["epoch"],
    )
    if best_epoch is not None:
        epochs = pd.to_numeric(metrics["epoch"], errors="coerce").dropna()
        right_half = not epochs.empty and best_epoch > (epochs.min() + epochs.max()) / 2
        fig.add_vline(
            x=best_epoch,
            line_dash="dot",
            line_color="grey",
            annotation_text=f"best epoch {best_epoch} (weights kept)",
            # its text on the side with room: at the last epoch it ran into the legend and was
            # cut ('best epoch 10 (weigh...': a browser pass)
            annotation_position="top left" if right_half else "top right",
        )
    return fig


def _whole_epochs(fig: go.Figure, epochs: pd.Series) -> go.Figure:
    """A tick per epoch on short runs (plotly's own ticks land on 1.5, 2.5, ... there), and an
    axis from the first epoch to the last: plotly's padding for the markers ran it past the
    last epoch, as if more were to come (a browser pass). Markers at the ends are drawn whole."""
    numbers = pd.to_numeric(epochs, errors="coerce").dropna()
    if numbers.empty:
        return fig
    first, last = float(numbers.min()), float(numbers.max())
    pad = 0.5 if first == last else 0.0
    fig.update_xaxes(range=[first - pad, last + pad])
    fig.update_traces(cliponaxis=False)
    # room right of the last epoch for its marker and tick label (with the legend below, the
    # plot reached the figure's edge and the last epoch's '10' was cut: a browser pass)
    fig.update_layout(margin={"r": 40})
    return fig.update_xaxes(dtick=1) if last <= 12 else fig


DASHES = ("solid", "dot", "dash", "longdash", "dashdot", "longdashdot")


def overlaid_curves(
    curves: dict[str, pd.DataFrame],
    metric: str = "val_loss",
    groups: dict[str, str] | None = None,
) -> go.Figure:
    """One line per run. ``groups`` (run name -> configuration) gives the runs of one
    configuration (its seeds) one colour, told apart by their dash: with a colour per run,
    three seeds of two models read as six unrelated models."""
    fig = go.Figure()
    palette = px.colors.qualitative.Plotly
    colour: dict[str, str] = {}
    seen: dict[str, int] = {}
    for name, df in curves.items():
        if metric in df and "epoch" in df:
            group = (groups or {}).get(name, name)
            colour.setdefault(group, palette[len(colour) % len(palette)])
            nth = seen[group] = seen.get(group, -1) + 1
            fig.add_trace(
                go.Scatter(
                    x=df["epoch"],
                    y=df[metric],
                    mode="lines+markers",
                    name=plain(name),
                    legendgroup=plain(group),
                    line={"color": colour[group], "dash": DASHES[nth % len(DASHES)]},
                    marker={"color": colour[group]},
                )
            )
    label = plain(metric_names.name(metric))
    epochs = [df["epoch"] for df in curves.values() if "epoch" in df]
    if epochs:
        _whole_epochs(fig, pd.concat(epochs))
    return fig.update_layout(
        title=f"{label} per epoch",
        xaxis_title="epoch",
        yaxis_title=label,
        showlegend=True,  # even for one curve: say which run it is
        # a click hides one run, not every run of its configuration
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "groupclick": "toggleitem"},
    )


def qc_violins(
    qc: pd.DataFrame, group: str | None = None, groups: object = None
) -> list[go.Figure]:
    """Violins of the QC columns, split by ``groups`` (one value per cell, named ``group``).
    The groups travel in a column of their own: a data column named like a QC metric
    (``total_counts``) replaced the metric it was named after."""
    idx = sample_index(len(qc), MAX_POINTS)
    sub = qc.iloc[idx].copy()
    if group is not None and groups is not None:
        by = plain(group)
        while by in sub.columns:  # a group label named like a QC column keeps both apart
            by += " "
        text, merged = few_groups(groups)
        sub[by] = text[idx]
        group = by
        note = merged_note(merged)
    else:
        group = None
    figs = []
    for col, label in (
        ("n_genes_by_counts", "Genes detected per cell"),
        ("total_counts", "Counts per cell"),
        ("pct_counts_mt", "% mitochondrial counts"),
    ):
        if col in sub:
            fig = px.violin(
                sub,
                y=col,
                x=group,
                color=group,
                box=True,
                points=False,
                title=sampled_title(label + (note if group else ""), len(sub), len(qc)),
                # groups in natural order (donors 1015, 1016, ...), not as the cells come
                category_orders={group: sorted(set(sub[group]), key=natural_key)}
                if group
                else None,
            )
            # the density ends at the data: counts per cell are never below 0
            fig.update_traces(spanmode="hard")
            fig.update_xaxes(type="category")  # donors 1015, 1016: names, not a number line
            figs.append(fig.update_layout(showlegend=False, yaxis_title=label))
    return figs


CONDITION_COLOURS = ["#9fb3c8", "#d62728", "#1f4e79"]  # control, predicted, stimulated


def embedding(
    coords: np.ndarray,
    color: pd.Series | np.ndarray,
    color_name: str,
    title: str,
    colours: dict[str, str] | None = None,
) -> go.Figure:
    idx = sample_index(coords.shape[0], MAX_POINTS)
    label = plain(color_name)
    full = np.asarray(color)
    numeric = np.issubdtype(full.dtype, np.number) and not np.issubdtype(full.dtype, np.bool_)
    merged = 0
    if not numeric:
        full, merged = few_groups(full)
    df = pd.DataFrame({"dim 1": coords[idx, 0], "dim 2": coords[idx, 1], label: full[idx]})
    if not numeric:
        df[label] = df[label].map(plain)
        # colours of the whole column (a sample may miss a group), the caller's first
        colours = {
            **{plain(k): v for k, v in category_colours(full).items()},
            **({plain(f"other ({merged:,} groups)"): OTHER_COLOUR} if merged else {}),
            **{plain(k): v for k, v in (colours or {}).items()},
        }
    fig = px.scatter(
        df,
        x="dim 1",
        y="dim 2",
        color=label,
        title=sampled_title(plain(title) + merged_note(merged), len(idx), coords.shape[0]),
        render_mode="webgl",
        category_orders={label: sorted(df[label].unique(), key=natural_key)}
        if not numeric
        else None,
        color_continuous_scale="Viridis" if numeric else None,
        color_discrete_map=colours if colours and not numeric else None,
    )
    fig.update_traces(marker={"size": 4})
    fig.update_layout(legend_title=label, showlegend=True, legend={"itemsizing": "constant"})
    if numeric:
        fig.update_layout(coloraxis_colorbar={"title": label})
    return fig


def recon_heatmaps(
    x, recon, genes: list[str], groups: pd.Series | None, total: int | None = None
) -> tuple[list[go.Figure], str]:
    """scQUEST's figure: input, reconstruction and error for the same cells and genes (the
    rows given are a stored sample when ``total``, the run's cells, is larger)."""
    x, recon = dense(x), dense(recon)
    n = x.shape[0]
    idx = sample_index(n, MAX_HEATMAP_CELLS)
    if groups is not None:
        idx = idx[np.argsort(np.asarray(groups)[idx].astype(str), kind="stable")]
    top = np.argsort(-x.var(0))[:MAX_HEATMAP_GENES]
    gene_names = [plain(genes[i]) for i in top]
    err = x[np.ix_(idx, top)] - recon[np.ix_(idx, top)]
    lim = float(np.abs(err).max()) or 1.0
    total = max(int(total or n), n)
    note = (
        f"{len(idx):,} of {total:,} cells"
        + (" (random sample)" if len(idx) < total else "")
        + (
            f", the {len(top)} most variable of {x.shape[1]:,} features"
            if len(top) < x.shape[1]
            else f", all {len(top)} features"  # 23 markers were "the top 23 variable genes"
        )
    )
    ylabels = [plain(v) for v in np.asarray(groups)[idx]] if groups is not None else None
    common = {  # arrays, not nested lists: plotly validates lists element by element
        "x": gene_names,
        "y": np.arange(len(idx)),
        "text": np.repeat(np.asarray(ylabels, dtype=object)[:, None], len(top), axis=1)
        if ylabels
        else None,
    }
    xin, xrec = x[np.ix_(idx, top)], recon[np.ix_(idx, top)]
    # one colour scale for input and reconstruction, so that equal colours mean equal values
    shared = {
        "zmin": float(min(np.nanmin(xin), np.nanmin(xrec))),
        "zmax": float(max(np.nanmax(xin), np.nanmax(xrec))),
    }
    figs = [
        go.Figure(go.Heatmap(z=xin, colorscale="Viridis", **shared, **common)).update_layout(
            title=f"Input ({note})"
        ),
        go.Figure(go.Heatmap(z=xrec, colorscale="Viridis", **shared, **common)).update_layout(
            title="Reconstruction (same colour scale as the input)"
        ),
        go.Figure(
            go.Heatmap(z=err, colorscale="RdBu_r", zmin=-lim, zmax=lim, **common)
        ).update_layout(title="Error (input - reconstruction)"),
    ]
    ticks: dict = {"showticklabels": False}
    if ylabels:  # one label in the middle of each group, a line between groups
        names, starts = np.unique(ylabels, return_index=True)
        order = np.argsort(starts)
        starts, names = starts[order], names[order]
        ends = np.append(starts[1:], len(ylabels))
        ticks = {
            "tickvals": list((starts + ends - 1) / 2),
            "ticktext": list(names),
            "showticklabels": True,
        }
        lines = [  # as one layout list: add_hline per line costs ~10 ms each
            {
                "type": "line",
                "xref": "x domain",
                "x0": 0,
                "x1": 1,
                "y0": b - 0.5,
                "y1": b - 0.5,
                "line": {"color": "white", "width": 2},
            }
            for b in starts[1:]
        ]
        for f in figs:
            f.update_layout(shapes=lines)
    for f in figs:
        f.update_xaxes(type="category")  # genes named like numbers stay names
        f.update_yaxes(
            title="cells" + (f" by {plain(groups.name)}" if groups is not None else ""),
            autorange="reversed",
            **ticks,
        )
    return figs, note


MAX_OUTLIERS = 300  # per group: the most extreme ones, beyond the whiskers


def group_boxes(values, groups, label: str, name: str, title: str) -> go.Figure:
    """One box per group from quartiles computed here (whiskers at 1.5 IQR): a million cells
    send a few numbers to the browser, not a million points. The cells beyond the whiskers are
    drawn as points (for an abnormality score they are the point of the plot), the
    ``MAX_OUTLIERS`` most extreme of each group when there are more, and the title says so."""
    text, merged = few_groups(groups)
    g = pd.Series(text, dtype="category")  # categories group a million cells fast
    v_all = pd.Series(np.asarray(values, dtype=float))
    parts = {str(k): v.dropna().to_numpy() for k, v in v_all.groupby(g, observed=True)}
    fig = go.Figure()
    colours = category_colours(text)  # the whole column's, as the UMAP of it takes them
    if merged:
        colours[f"other ({merged:,} groups)"] = OTHER_COLOUR
        title += merged_note(merged)
    capped = 0
    for g in sorted((k for k, v in parts.items() if len(v)), key=natural_key):
        v = parts[g]
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        lo, hi = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
        colour = colours[g]
        fig.add_trace(
            go.Box(
                name=plain(g),
                x=[plain(g)],
                q1=[q1],
                median=[med],
                q3=[q3],
                lowerfence=[v[v >= lo].min()],
                upperfence=[v[v <= hi].max()],
                marker_color=colour,
            )
        )
        out = v[(v < lo) | (v > hi)]
        if len(out) > MAX_OUTLIERS:
            capped += len(out) - MAX_OUTLIERS
            out = out[np.argsort(-np.abs(out - med), kind="stable")[:MAX_OUTLIERS]]
        if len(out):
            fig.add_trace(
                go.Scatter(
                    x=[plain(g)] * len(out),
                    y=out,
                    mode="markers",
                    marker={"color": colour, "size": 4, "opacity": 0.6},
                    name=f"{plain(g)}: beyond the whiskers",
                    hovertemplate=f"{plain(name)} %{{y:.4g}}<extra>{plain(g)}</extra>",
                )
            )
    if capped:
        title += f" (beyond the whiskers: the {MAX_OUTLIERS} most extreme cells of each group)"
    fig.update_xaxes(type="category")  # groups named 0, 1, 1015: names, not a number line
    return fig.update_layout(title=title, showlegend=False, xaxis_title=label, yaxis_title=name)


def confusion(cm: list[list[int]], classes: list[str]) -> go.Figure:
    fig = px.imshow(
        np.asarray(cm),
        x=[plain(c) for c in classes],
        y=[plain(c) for c in classes],
        text_auto=True,
        color_continuous_scale="Blues",
        labels={"x": "predicted", "y": "true", "color": "cells"},
        aspect="auto",  # square cells squeezed 10 classes with long names into a small box
    )
    fig.update_xaxes(type="category").update_yaxes(type="category")  # classes 0, 1, 10
    return fig.update_layout(
        title="Confusion matrix (test cells)", height=max(450, 150 + 38 * len(classes))
    )


def per_class_f1(per_class: dict[str, float]) -> go.Figure:
    df = pd.DataFrame({"class": [plain(c) for c in per_class], "F1": list(per_class.values())})
    fig = px.bar(
        df, x="class", y="F1", title="F1 per class (test cells)", range_y=[0, 1.05], text="F1"
    )
    # each bar says its value: an F1 of 0 drew no bar and read as a missing class
    fig.update_traces(texttemplate="%{y:.2f}", textposition="outside", cliponaxis=False)
    return fig.update_xaxes(type="category")


def mean_scatter(
    pred_mean: np.ndarray,
    real_mean: np.ndarray,
    genes: list[str],
    top: list[str],
    r2_all: float,
    r2_top: float,
    title: str,
    limits: tuple[float, float] | None = None,
) -> go.Figure:
    """Predicted against real per-gene means; ``limits``: both axes' range, shared by panels
    drawn side by side (scGen's and the baseline's had ticks 1 and 2 apart: a browser pass)."""
    df = pd.DataFrame(
        {"real stimulated mean": real_mean, "predicted mean": pred_mean, "gene": genes}
    )
    df["genes"] = np.where(df["gene"].isin(top), "top-100 DEG", "other")
    df["gene"] = df["gene"].map(plain)
    fig = px.scatter(
        df,
        x="real stimulated mean",
        y="predicted mean",
        color="genes",
        hover_name="gene",
        color_discrete_map={"top-100 DEG": "#d62728", "other": "#9fb3c8"},
        title=f"{plain(title)}: R² all = {r2_all:.3f}, top-100 DEGs = {r2_top:.3f}",
    )
    fig.update_layout(
        title_font_size=13
    )  # two of these sit side by side: keep the title on one line
    lo, hi = float(min(df.min(numeric_only=True))), float(max(df.max(numeric_only=True)))
    if limits is not None and all(np.isfinite(limits)):
        lo, hi = float(limits[0]), float(limits[1])
        pad = 0.03 * (hi - lo or 1.0)
        fig.update_xaxes(range=[lo - pad, hi + pad]).update_yaxes(range=[lo - pad, hi + pad])
    return fig.add_shape(
        type="line", x0=lo, y0=lo, x1=hi, y1=hi, line={"dash": "dot", "color": "grey"}
    )


MAX_VIOLIN_POINTS = 400  # cells per gene and group drawn as points on the DEG violins


def deg_violins(
    values: pd.DataFrame, gene_order: list[str], condition: str, order: list[str] | None = None
) -> go.Figure:
    """Violins per gene, conditions side by side in ``order`` (control, predicted, stimulated):
    each with its width (same for all), box and median line, so the distributions are visible."""
    colours = [*CONDITION_COLOURS, "#6b8e23", "#9467bd"]
    groups = list(order or []) + sorted(
        set(values[condition].astype(str)) - set(order or []), key=str
    )
    fig = go.Figure()
    for i, g in enumerate(groups):
        sub = values[values[condition].astype(str) == g]
        if sub.empty:
            continue
        # every cell drawn where there are few: a group with many zeros made a spike at 0 that
        # took the violin's width, and the rest of it read as a thin line (a browser pass)
        per_gene = int(sub.groupby("gene", observed=True).size().max())
        fig.add_trace(
            go.Violin(
                x=sub["gene"].map(plain),
                y=sub["expression"],
                name=plain(g),
                legendgroup=plain(g),
                line_color=colours[i % len(colours)],
                fillcolor=colours[i % len(colours)],
                opacity=0.75,
                box_visible=True,
                box={"width": 0.35, "fillcolor": "white", "line": {"color": "black", "width": 1}},
                meanline_visible=False,
                points="all" if per_gene <= MAX_VIOLIN_POINTS else False,
                jitter=0.4,
                pointpos=0,
                marker={"size": 3, "opacity": 0.45, "color": "#333333"},
                scalemode="width",
                spanmode="hard",
                # no trace width: a fixed one makes plotly draw the groups on top of each other
                bandwidth=None,
            )
        )
    return fig.update_layout(
        title="Top DEGs: control, predicted and real stimulated (box: median and quartiles)",
        violinmode="group",
        violingap=0.25,
        violingroupgap=0.05,
        xaxis={
            "title": "gene",
            "type": "category",
            "categoryorder": "array",
            "categoryarray": [plain(g) for g in gene_order],
        },
        yaxis_title="expression",
        legend_title=plain(condition),
        showlegend=True,
    )


def metrics_table_style(
    df: pd.DataFrame, better=metric_names.better, values: pd.DataFrame | None = None
) -> pd.io.formats.style.Styler:
    """``df`` with the best value of each ranked metric column marked, where there is a choice:
    a column with fewer than two values marks nothing; unranked metrics are never marked.
    ``values`` (same index and columns) ranks cells whose shown text is not the number itself
    (``mean ± sd``)."""
    num = (df if values is None else values).select_dtypes("number")

    def best(col: pd.Series) -> list[str]:
        if col.name not in num:
            return [""] * len(col)
        return _best_marks(num[col.name], better(col.name))

    return df.style.apply(best, axis=0).format(precision=4, na_rep="-")


def metric_rows_style(df: pd.DataFrame, keys: list[str], better=metric_names.better):
    """A table with one metric per row (``keys``, in row order) and one prediction per numeric
    column, the best value of each ranked row marked: narrow enough for long metric names."""
    num = df.select_dtypes("number")

    def best(row: pd.Series) -> list[str]:
        i = df.index.get_loc(row.name)
        shown = _best_marks(num.iloc[i], better(keys[i]))
        marks = dict(zip(num.columns, shown, strict=True))
        return [marks.get(c, "") for c in row.index]

    return df.style.apply(best, axis=1).format(precision=4, na_rep="-")


def _best_marks(v: pd.Series, direction: str | None) -> list[str]:
    """The style of each value: the best one (``higher`` or ``lower``) marked, where there is a
    choice; an unranked metric or one with fewer than two distinct values marks nothing."""
    v = pd.to_numeric(v, errors="coerce")
    if direction is None or v.notna().sum() < 2 or v.nunique() < 2:
        return [""] * len(v)
    target = v.max() if direction == "higher" else v.min()
    return ["background-color: #c7e9c0; font-weight: bold" if x == target else "" for x in v]


def mean_sd_text(rows: list[dict], metrics: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of ``engine.seeds.table`` as shown text (``mean ± sd``, and how many seeds when some
    lack the metric) and as the means that rank them, with the same columns."""
    shown, means = [], []
    for r in rows:
        head = {"model": r["model"], "baseline": r["baseline"], "seeds": r["seeds"]}
        shown.append(head | {k: r.get(f"{k}_text") for k in metrics})
        means.append(head | {k: r.get(k) for k in metrics})
    return pd.DataFrame(shown), pd.DataFrame(means)


def seed_spread(rows: list[dict], metric: str) -> go.Figure:
    """Each configuration's seeds as points (hover: the seeds at that value) and its mean ± sd,
    in the table's order from the top."""
    fig = go.Figure()
    label = plain(metric_names.name(metric))
    for r in rows:
        if metric not in r:
            continue
        name = plain(r["model"])
        at: dict[float, list[str]] = {}
        for s, v in r[f"{metric}_values"].items():
            at.setdefault(v, []).append(str(s))
        fig.add_trace(
            go.Scatter(
                x=list(at),
                y=[name] * len(at),
                mode="markers",
                name=name,
                marker={"size": [9 + 3 * (len(s) - 1) for s in at.values()], "opacity": 0.6},
                text=[("seeds " if len(s) > 1 else "seed ") + ", ".join(s) for s in at.values()],
                hovertemplate="%{text}: %{x:.4g}<extra>%{fullData.name}</extra>",
                showlegend=False,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[r[metric]],
                y=[name],
                mode="markers",
                name=name,
                marker={"symbol": "line-ns-open", "size": 18, "color": "black"},
                error_x={"type": "data", "array": [r[f"{metric}_sd"]], "visible": True},
                customdata=[[r[f"{metric}_sd"], r[f"{metric}_n"]]],
                hovertemplate="mean %{x:.4g} ± %{customdata[0]:.2g} over %{customdata[1]} seed(s)"
                "<extra>%{fullData.name}</extra>",
                showlegend=False,
            )
        )
    return fig.update_layout(
        title=f"{label}: every seed, mean ± sd",
        xaxis_title=label,
        yaxis={"autorange": "reversed"},
        # room for each row: with the default margins two rows were 10 px apart, one label hidden
        height=170 + 50 * len(rows),
        margin={"t": 60, "b": 60},
    )


def metric_columns(columns, extra: dict | None = None) -> dict:
    """``st.column_config`` for a table of metric columns: readable name, tooltip with what it
    measures and which direction is better; the data keep the engine's keys."""
    import streamlit as st

    out = {}
    for c in columns:
        m = metric_names.describe(c)
        if m.name != m.key or m.help:
            # wide enough for the whole name: a table sizes columns to their values, and
            # "Reconstruction error (t" and "(tr" could not be told apart
            out[c] = st.column_config.Column(
                label=m.name, help=m.tooltip, width=header_width(m.name)
            )
    return {**out, **(extra or {})}


def header_width(name: str) -> int | None:
    """Pixels a column needs to show its header ``name`` whole (None: the table's own choice)."""
    return None if len(name) <= 12 else min(300, 7 * len(name) + 32)


def to_png(fig: go.Figure) -> bytes:
    """A static PNG of ``fig`` (plotly + kaleido, which drives a local Chrome/Chromium)."""
    import os
    import shutil

    if not os.environ.get("BROWSER_PATH"):
        found = next(
            (
                p
                for p in (
                    shutil.which(n)
                    for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                )
                if p
            ),
            None,
        )
        if found:
            os.environ["BROWSER_PATH"] = found
    try:
        return for_export(fig).to_image(format="png", width=1100, height=650, scale=2)
    except Exception as exc:
        raise RuntimeError(
            "PNG export needs Chrome or Chromium on the server; use the camera icon on the figure instead."
        ) from exc
