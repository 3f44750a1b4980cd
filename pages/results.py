"""Results of one run: curves, task figures, and everything to take home."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import streamlit as st

from engine import evaluate, export, jobs, runs
from engine.perturb import gene_means
from ui import figures
from ui.state import ensure_app_navigation

ensure_app_navigation()
st.title("Results")
finished = [
    r
    for r in jobs.list_jobs()
    if r["state"] in ("completed", "cancelled") and (Path(r["path"]) / "metrics.json").exists()
]
if not finished:
    st.info("No finished run yet: train one on **Train** and watch it on **Runs**.")
    st.stop()
ids = [r["id"] for r in finished]
pre = st.query_params.get("run") or st.session_state.get("results_run")
run_id = st.selectbox(
    "Run",
    ids,
    index=ids.index(pre) if pre in ids else 0,
    format_func=lambda i: next(
        f"{x['id']} · {x['model']} on {x['dataset']}" for x in finished if x["id"] == i
    ),
)
st.query_params["run"] = st.session_state["results_run"] = run_id
run_dir = jobs.resolve_run(run_id)
spec = runs.read_json(run_dir / "run.json", {})
metrics = runs.read_json(run_dir / "metrics.json", {})
task = spec.get("task")


@st.cache_resource(max_entries=3, show_spinner="Loading results...")
def results(path: str, mtime: float) -> ad.AnnData:
    return ad.read_h5ad(path)


@st.cache_data(max_entries=8, show_spinner="Computing UMAP of the latent space...")
def latent_umap(path: str, mtime: float, key: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    import umap

    res = results(path, mtime)
    idx = figures.sample_index(res.n_obs, n)
    return idx, umap.UMAP(random_state=0, n_neighbors=15).fit_transform(
        np.asarray(res.obsm[key])[idx]
    )


res_path = run_dir / "results.h5ad"
res = results(str(res_path), res_path.stat().st_mtime)
figs: dict[str, object] = {}
st.caption(
    f"{spec.get('model')} · task: {task} · data {spec.get('dataset_name')} ({spec.get('data_shape')}) · seed {spec.get('seed')} · device {spec.get('device_name')}"
)

scalar = {
    k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
}
if task != "perturb":
    st.dataframe(pd.DataFrame([scalar]), hide_index=True, width="stretch")
curve = runs.read_metrics_csv(run_dir)
if "train_loss" in curve:
    figs["loss_curves"] = figures.loss_curves(curve)
    st.plotly_chart(figs["loss_curves"], width="stretch")

if task == "classify":
    c = st.columns(2)
    figs["confusion"] = figures.confusion(metrics["confusion"], metrics["classes"])
    figs["per_class_f1"] = figures.per_class_f1(metrics["per_class_f1"])
    c[0].plotly_chart(figs["confusion"], width="stretch")
    c[1].plotly_chart(figs["per_class_f1"], width="stretch")

if task in ("reconstruct", "embed"):
    groups_opts = [
        "(none)",
        *[
            c
            for c in res.obs.columns
            if res.obs[c].astype(str).nunique() <= 200 and c != "abnormality"
        ],
    ]
    group = st.selectbox(
        "Order and group cells by", groups_opts, index=1 if len(groups_opts) > 1 else 0
    )
    grp = None if group == "(none)" else res.obs[group].astype(str)
    if "reconstruction" in res.layers:
        x = (
            res.layers["counts"]
            if task == "embed" and "counts" in res.layers and spec.get("layer") in (None, "counts")
            else res.X
        )
        maps, note = figures.recon_heatmaps(
            x if task == "reconstruct" else res.layers.get("counts", res.X),
            res.layers["reconstruction"],
            list(res.var_names),
            grp,
        )
        st.subheader("Input, reconstruction and error")
        for name, fig in zip(("input", "reconstruction", "error"), maps, strict=True):
            figs[f"heatmap_{name}"] = fig
            st.plotly_chart(fig, width="stretch")
    if "abnormality" in res.obs and grp is not None:
        import plotly.express as px

        df = pd.DataFrame({"abnormality": res.obs["abnormality"].to_numpy(), group: grp.to_numpy()})
        figs["abnormality"] = px.box(
            df,
            x=group,
            y="abnormality",
            color=group,
            title="Per-cell abnormality (reconstruction MSE) by group",
        ).update_layout(showlegend=False)
        st.plotly_chart(figs["abnormality"], width="stretch")
    key = f"X_{spec.get('model')}"
    show_umap = key in res.obsm and st.toggle(
        "Latent UMAP",
        value=res.n_obs <= 3000,  # larger runs: on request, it takes seconds
        help="UMAP of the latent codes of up to 5,000 cells, cached per run",
    )
    if show_umap and res.obsm[key].shape[1] >= 2:
        color = st.selectbox(
            "Colour the latent UMAP by", [c for c in res.obs.columns], key="umap_color"
        )
        idx, coords = latent_umap(str(res_path), res_path.stat().st_mtime, key, 5000)
        figs["latent_umap"] = figures.embedding(
            coords,
            res.obs[color].astype(str).to_numpy()[idx]
            if not pd.api.types.is_numeric_dtype(res.obs[color])
            else res.obs[color].to_numpy()[idx],
            color,
            f"UMAP of {key}",
        )
        st.plotly_chart(figs["latent_umap"], width="stretch")

if task == "perturb":
    info = res.uns.get("scgen", {})
    targets = list(info.get("targets", []))
    target = st.selectbox("Cell type", targets) if len(targets) > 1 else targets[0]
    sub_dir = (
        run_dir
        if len(targets) == 1
        else run_dir
        / "loo"
        / __import__("engine.workspace", fromlist=["safe_name"]).safe_name(target)
    )
    m = runs.read_json(sub_dir / "metrics.json", {}) if len(targets) > 1 else metrics
    if len(targets) > 1:
        st.subheader("Leave-one-cell-type-out")
        table = pd.read_csv(run_dir / "loo.csv")
        cols = [
            "cell_type",
            "n_ctrl",
            "n_stim",
            "epochs",
            "r2_mean_all",
            "baseline_noshift_r2_mean_all",
            "baseline_meanshift_r2_mean_all",
            "r2_mean_top100",
            "baseline_meanshift_r2_mean_top100",
            "pearson_delta",
            "direction_top20",
            "beats_noshift",
            "beats_meanshift",
        ]
        st.dataframe(table[[c for c in cols if c in table]], hide_index=True, width="stretch")
    if not m or "r2_mean_all" not in m:
        st.info(
            f"No real stimulated {target} cells in the data: predictions are in the results file, but cannot be scored."
        )
    else:
        rows = [
            {
                "prediction": name,
                **{
                    k: m.get(p + k)
                    for k in (
                        "r2_mean_all",
                        "r2_mean_top100",
                        "r2score_mean_all",
                        "r2_var_all",
                        "pearson_delta",
                        "direction_top20",
                    )
                },
            }
            for name, p in (
                ("scGen", ""),
                ("baseline: control unchanged", "baseline_noshift_"),
                ("baseline: control + mean shift", "baseline_meanshift_"),
            )
        ]
        st.dataframe(
            figures.metrics_table_style(pd.DataFrame(rows), evaluate.higher_is_better),
            hide_index=True,
            width="stretch",
        )
        if not m.get("beats_meanshift", True):
            st.warning(
                f"For {target}, scGen does not beat the simple mean-shift baseline on R² of mean expression (all genes)."
            )
        means = gene_means(
            res, info["condition_key"], info["cell_type_key"], info["ctrl"], info["stim"], target
        )
        top = runs.read_json(sub_dir / "top_degs.json", [])
        panels = (
            ("pred_vs_real", "predicted", "", f"scGen, {target}"),
            (
                "baseline_vs_real",
                "meanshift",
                "baseline_meanshift_",
                "Baseline: control + mean shift",
            ),
        )
        for col, (key, source, prefix, title) in zip(st.columns(2), panels, strict=True):
            figs[key] = figures.mean_scatter(
                means[source].to_numpy(),
                means["real"].to_numpy(),
                list(means.index),
                top,
                m[f"{prefix}r2_mean_all"],
                m[f"{prefix}r2_mean_top100"],
                title,
            )
            col.plotly_chart(figs[key], width="stretch")
        genes = top[:6]
        cond, types = (
            res.obs[info["condition_key"]].astype(str),
            res.obs[info["cell_type_key"]].astype(str),
        )
        mask = (types == target).to_numpy()
        sub = res[mask, genes]
        xs = sub.X.toarray() if hasattr(sub.X, "toarray") else np.asarray(sub.X)
        long = (
            pd.DataFrame(xs, columns=genes)
            .assign(condition=cond[mask].to_numpy())
            .melt(id_vars="condition", var_name="gene", value_name="expression")
        )
        figs["top_deg_violins"] = figures.deg_violins(
            long, genes, "condition", [info["ctrl"], "predicted", info["stim"]]
        )
        st.plotly_chart(figs["top_deg_violins"], width="stretch")
        if st.checkbox("Show latent UMAP of control, predicted and real stimulated cells"):
            keep = np.flatnonzero(mask)
            import umap

            coords = umap.UMAP(random_state=0).fit_transform(np.asarray(res.obsm["X_scgen"])[keep])
            figs["latent_umap"] = figures.embedding(
                coords,
                cond.to_numpy()[keep],
                "condition",
                f"UMAP of the scGen latent space, {target}",
            )
            st.plotly_chart(figs["latent_umap"], width="stretch")

st.divider()
st.subheader("Export")
c = st.columns(3)
# files are read or built only when their button is clicked (callables run on download)
c[0].download_button(
    "Annotated .h5ad", res_path.read_bytes, file_name=f"{run_id}.h5ad", on_click="ignore"
)
weights = run_dir / "model.pt"
if weights.exists():
    c[0].download_button(
        "Model weights (.pt)", weights.read_bytes, file_name=f"{run_id}-model.pt", on_click="ignore"
    )
c[1].download_button(
    "Metrics (JSON)",
    json.dumps(metrics, indent=2),
    file_name=f"{run_id}-metrics.json",
    on_click="ignore",
)
c[1].download_button(
    "Metrics (CSV)",
    export.metrics_csv(run_dir),
    file_name=f"{run_id}-metrics.csv",
    on_click="ignore",
)
c[2].download_button(
    "Reproduce script (.py)", export.script(run_dir), file_name=f"{run_id}.py", on_click="ignore"
)
c[2].download_button(
    "Whole run (.zip)", lambda: export.bundle(run_dir), file_name=f"{run_id}.zip", on_click="ignore"
)
if figs:
    which = st.selectbox("Figure", list(figs))
    fig = figs[which]
    f1, f2 = st.columns(2)
    f1.download_button(
        "Figure as interactive HTML",
        lambda: fig.to_html(include_plotlyjs="cdn"),
        file_name=f"{run_id}-{which}.html",
        on_click="ignore",
    )
    f2.download_button(
        "Figure as PNG",
        lambda: figures.to_png(fig),
        file_name=f"{run_id}-{which}.png",
        on_click="ignore",
        mime="image/png",
        help="rendered on the server with Chrome/Chromium; the camera icon on each figure works too",
    )
