"""One model layer: training and ``engine predict`` write the same slots with the same values,
for every model in the registry; the input's own slots are never changed; no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from engine import io, models, predict, train
from engine.cli import main
from engine.errors import ScwbError
from engine.spec import RunSpec
from tests.conftest import ROOT

SCGEN = dict(
    condition_key="condition",
    ctrl="control",
    stim="stimulated",
    cell_type_key="cell_type",
    predict="B cell",
    params={"n_hidden": 32, "n_latent": 8},
)
CASES = {
    "logreg": dict(model="logreg", label_key="cell_type"),
    "mlp": dict(model="mlp", label_key="cell_type"),
    "sk_logreg": dict(model="sk_logreg", label_key="cell_type"),
    "autoencoder": dict(model="autoencoder", train_on={"condition": ["control"]}),
    "pca": dict(model="pca"),
    "vae_X": dict(model="vae", data="counts", label_key="cell_type"),
    "vae_layer_batch": dict(
        model="vae", layer="counts", label_key="cell_type", params={"batch_key": "sample"}
    ),
    "pca_embed_counts": dict(model="pca_embed", data="counts"),
    "scgen": dict(model="scgen", **SCGEN),
}


def _values(v):
    return np.asarray(v.toarray() if sp.issparse(v) else v)


def _assert_same_slots(a: ad.AnnData, b: ad.AnnData, where: str, keys) -> None:
    for key in keys:
        x, y = getattr(a, where)[key], getattr(b, where)[key]
        if where == "obs" and not pd.api.types.is_numeric_dtype(x):
            assert list(x.astype(str)) == list(y.astype(str)), key
        else:
            np.testing.assert_allclose(_values(x), _values(y), rtol=1e-4, atol=1e-4, err_msg=key)


def test_every_registry_model_is_covered():
    covered = {c["model"] for c in CASES.values()}
    assert covered == set(models.REGISTRY)


@pytest.mark.parametrize("case", list(CASES))
def test_predict_on_training_cells_equals_results(tmp_path, case, lognorm_adata, counts_adata):
    kw = dict(CASES[case])
    source = counts_adata if kw.pop("data", "lognorm") == "counts" else lognorm_adata
    source = source.copy()
    source.obsm["X_pca"] = np.ones((source.n_obs, 50), dtype=np.float32)  # the input's own
    path = io.write_h5ad(source, tmp_path / "in.h5ad")
    out = tmp_path / "run"
    train.run(RunSpec(data=str(path), out=str(out), epochs=2, **kw))
    res = ad.read_h5ad(out / "results.h5ad")
    slots = dict(res.uns["scwb"]["slots"])
    assert slots, "uns['scwb'] names the slots it wrote"
    # the input's own slots are untouched
    np.testing.assert_array_equal(res.obsm["X_pca"][: source.n_obs], source.obsm["X_pca"])
    assert set(source.obs.columns) <= set(res.obs.columns)
    for layer in source.layers:
        np.testing.assert_allclose(
            _values(res.layers[layer])[: source.n_obs], _values(source.layers[layer])
        )

    data = io.read(path)
    again = predict.predict(out, data)
    shuffled = data[:, np.random.default_rng(0).permutation(data.n_vars)].copy()
    aligned = predict.predict(out, shuffled, align=True)
    for other in (again, aligned):
        assert list(other.obs_names) == list(res.obs_names)
        assert dict(other.uns["scwb"]["slots"]) == slots
        other = other[:, res.var_names]  # per-gene outputs are compared gene by gene
        for where in ("obs", "obsm", "layers"):
            written = [v for v in slots.values() if v in getattr(res, where)]
            _assert_same_slots(res, other, where, written)
        assert other.uns["scwb"]["run_id"] == res.uns["scwb"]["run_id"] == "run"
    if case == "scgen":
        pred = (res.obs["condition"] == "predicted").to_numpy()
        assert pred.sum() > 0 and np.isfinite(res.obsm["X_scgen"]).all()
        for other in (again, aligned[:, res.var_names]):
            _assert_same_slots(res[pred], other[pred], "obsm", ["X_scgen"])
            np.testing.assert_allclose(_values(res.X)[pred], _values(other.X)[pred], atol=1e-4)


def test_predict_cli_on_a_vae_with_batch_and_counts_layer(tmp_path, lognorm_adata, capsys):
    """Both bugs of the old predict: the batch covariate and the counts layer with --align."""
    path = io.write_h5ad(lognorm_adata, tmp_path / "in.h5ad")
    shuffled = lognorm_adata[:, lognorm_adata.var_names[::-1]].copy()
    io.write_h5ad(shuffled, tmp_path / "shuffled.h5ad")
    run = tmp_path / "vae"
    args = ["train", "--model", "vae", "--data", str(path), "--out", str(run), "--epochs", "1"]
    assert main([*args, "--param", "batch_key=sample", "--layer", "counts"]) == 0
    out = tmp_path / "pred.h5ad"
    assert (
        main(
            [
                "predict",
                "--run",
                str(run),
                "--data",
                str(tmp_path / "shuffled.h5ad"),
                "-o",
                str(out),
                "--align",
            ]
        )
        == 0
    )
    res, pred = ad.read_h5ad(run / "results.h5ad"), ad.read_h5ad(out)
    np.testing.assert_allclose(pred.obsm["X_vae"], res.obsm["X_vae"], atol=1e-4)


def test_predict_refuses_an_unknown_batch(tmp_path, lognorm_adata):
    path = io.write_h5ad(lognorm_adata, tmp_path / "in.h5ad")
    run = tmp_path / "vae"
    train.run(
        RunSpec(model="vae", data=str(path), out=str(run), epochs=1, params={"batch_key": "sample"})
    )
    other = lognorm_adata.copy()
    other.obs["sample"] = "donor9"
    with pytest.raises(ScwbError, match="never saw"):
        predict.predict(run, other)


def test_extra_and_missing_genes_keep_the_datas_own_gene_order(tmp_path, lognorm_adata):
    """Per-gene outputs land on the right genes of the new data: genes the model lacks get NaN,
    genes the data lacks are filled for the model and dropped from the outputs."""
    path = io.write_h5ad(lognorm_adata, tmp_path / "in.h5ad")
    run = tmp_path / "pca"
    train.run(RunSpec(model="pca", data=str(path), out=str(run)))
    res = ad.read_h5ad(run / "results.h5ad")
    new = lognorm_adata[:, lognorm_adata.var_names[10:][::-1]].copy()  # 10 missing, reversed
    extra = ad.AnnData(
        X=np.ones((new.n_obs, 3), np.float32),
        obs=new.obs[[]],
        var=pd.DataFrame(index=["x1", "x2", "x3"]),
    )
    new = ad.concat([new, extra], axis=1, merge="first")
    out = predict.predict(run, new, align=True)
    assert list(out.var_names) == list(new.var_names), "the data's own genes, in its order"
    assert np.isnan(out[:, ["x1", "x2", "x3"]].layers["reconstruction"]).all()
    shared = list(new.var_names[:5])
    assert np.isfinite(out[:, shared].layers["reconstruction"]).all()
    assert len(out.uns["scwb"]["missing_genes"]) == 10
    # the same cells with every gene: the reconstruction of a gene does not depend on order
    same = predict.predict(run, lognorm_adata[:, lognorm_adata.var_names[::-1]].copy())
    np.testing.assert_allclose(
        same[:, res.var_names].layers["reconstruction"], res.layers["reconstruction"], atol=1e-4
    )


def test_sk_logreg_trained_without_a_class_labels_cells_right(tmp_path, lognorm_adata):
    path = io.write_h5ad(lognorm_adata, tmp_path / "in.h5ad")
    run = tmp_path / "sk"
    train.run(
        RunSpec(
            model="sk_logreg",
            data=str(path),
            out=str(run),
            label_key="cell_type",
            train_on={"cell_type": ["T cell", "B cell", "Monocyte"]},
        )
    )
    res = ad.read_h5ad(run / "results.h5ad")
    assert res.obsm["proba_sk_logreg"].shape[1] == 4
    seen = res.obs["cell_type"].astype(str) != "NK cell"
    agree = (res.obs["pred_cell_type"].astype(str) == res.obs["cell_type"].astype(str))[seen]
    assert agree.mean() > 0.9, "columns follow the classes the estimator saw"
    assert set(res.obs["pred_cell_type"].astype(str)) <= {"T cell", "B cell", "Monocyte"}


def test_predict_refuses_counts_for_a_model_trained_on_log_values(
    tmp_path, lognorm_adata, counts_adata
):
    path = io.write_h5ad(lognorm_adata, tmp_path / "in.h5ad")
    run = tmp_path / "mlp"
    train.run(RunSpec(model="mlp", data=str(path), out=str(run), label_key="cell_type", epochs=1))
    with pytest.raises(ScwbError, match="trained on transformed values"):
        predict.predict(run, counts_adata)
    run2 = tmp_path / "pe"
    train.run(
        RunSpec(
            model="pca_embed",
            data=str(io.write_h5ad(counts_adata, tmp_path / "c.h5ad")),
            out=str(run2),
        )
    )
    with pytest.raises(ScwbError, match="trained on raw counts"):
        predict.predict(run2, lognorm_adata)


def _imports(path: Path) -> set[str]:
    """Every engine module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("engine"):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("engine")}
    return found


def test_no_import_cycle_in_engine():
    files = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / "engine").rglob("*.py")
    }
    graph = {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}
    for m in graph:  # a package imports its own modules' parents: ignore `engine` itself
        graph[m].discard("engine")
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, m, n]))
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_app_side_modules_do_not_import_torch():
    """The app validates forms with engine.preflight; none of these may load torch."""
    import subprocess
    import sys

    code = (
        "import sys; import engine.preflight, engine.spec, engine.models, engine.setup, "
        "engine.split, engine.perturb, engine.export, engine.runs, engine.jobs, engine.results; "
        "print('torch' in sys.modules or 'pytorch_lightning' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "False"


def test_the_app_process_never_imports_torch(tmp_path):
    """Every page rendered in one process (AppTest), with a dataset and a finished run: torch
    and Lightning stay out of the app process (a worker trains in its own process)."""
    import subprocess
    import sys

    code = f"""
import os, sys
os.environ["SCWB_HOME"] = {str(tmp_path / "home")!r}
os.environ["SCWB_BENCHMARK"] = "0"
from streamlit.testing.v1 import AppTest
from engine import datasets
from engine.demos import synthetic_perturbation
datasets.save(synthetic_perturbation(n_cells=200, n_genes=50), "syn")
at = AppTest.from_file("app.py", default_timeout=120)
at.run()
for page in ("data", "preprocess", "train", "runs", "results", "compare", "explore"):
    at.switch_page(f"pages/{{page}}.py")
    at.run()
    assert not at.exception, (page, [e.message for e in at.exception])
print(sorted(m for m in ("torch", "pytorch_lightning", "lightning") if m in sys.modules))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_predict_on_no_cells_says_so(tmp_path, lognorm_adata):
    path = io.write_h5ad(lognorm_adata, tmp_path / "in.h5ad")
    run = tmp_path / "pca"
    train.run(RunSpec(model="pca", data=str(path), out=str(run)))
    with pytest.raises(ScwbError, match="no cells"):
        predict.predict(run, lognorm_adata[:0].copy())


def test_a_model_saved_with_a_dropped_parameter_still_predicts(tmp_path, lognorm_adata):
    """A run trained by an earlier version (logreg with ``weight_decay``, before ``C``)."""
    import json

    path = io.write_h5ad(lognorm_adata, tmp_path / "in.h5ad")
    run = tmp_path / "logreg"
    train.run(RunSpec(model="logreg", data=str(path), out=str(run), label_key="cell_type"))
    meta = json.loads((run / "model.json").read_text())
    meta["params"] = {"weight_decay": 0.0}
    (run / "model.json").write_text(json.dumps(meta))
    out = predict.predict(run, lognorm_adata)
    res = ad.read_h5ad(run / "results.h5ad")
    assert (out.obs["pred_cell_type"] == res.obs["pred_cell_type"]).all()
