"""Every page through Streamlit's AppTest, as a user would click it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from engine import datasets, jobs, train
from engine.demos import load_demo
from engine.spec import RunSpec
from tests.conftest import ROOT, SCGEN_B_CELLS, finish_preview

T = 60


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py")
        at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def errors(at) -> list[str]:
    return [e.value for e in at.error]


@pytest.fixture
def dataset(lognorm_adata):
    """A saved dataset, made current the way the app remembers it across restarts."""
    from engine import runs, workspace

    name = datasets.save(lognorm_adata, "syn", source="test")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    return name


def test_home_shows_intro_and_loads_demo():
    at = app()
    assert "scWorkbench" in at.title[0].value
    assert any("Train and compare" in m.value for m in at.markdown)
    # the box names the demo; what it holds is said in full below it (the box cut it off)
    assert at.selectbox[0].value == "pbmc68k_reduced"
    assert any(c.value.startswith("700 PBMCs x 765 genes") for c in at.caption)
    at.selectbox[0].set_value("synthetic_perturbation").run()
    assert any(c.value.startswith("2,000 synthetic cells") for c in at.caption)
    at.selectbox[0].set_value("pbmc68k_reduced").run()
    at.button[0].click().run()
    assert not at.exception
    assert [d["name"] for d in datasets.list_datasets()] == ["pbmc68k_reduced"]


def test_home_links_each_recent_run(dataset):
    """A browser pass: Home's recent runs were plain text. A finished run links to its
    results, the page opening on that run."""
    run = _finished(dataset, "sk_logreg", label_key="cell_type")
    at = app()
    links = [p.proto for p in at.get("page_link")]
    mine = next(link for link in links if run in link.label)
    assert (mine.page, mine.query_string) == ("results", f"dataset={dataset}&run={run}")
    assert mine.label.endswith(" · completed") and "sk_logreg on syn" in mine.help


def _upload(at, name: str, content: bytes):
    at.file_uploader[0].upload(name, content).run()
    next(b for b in at.button if b.label == "Load file").click().run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_data_page_upload_and_summary(counts_file):
    at = app("data")
    with open(counts_file, "rb") as fh:
        _upload(at, "my counts.h5ad", fh.read())
    assert not errors(at), errors(at)
    assert any("Loaded 600 cells" in s.value for s in at.success)
    assert [d["name"] for d in datasets.list_datasets()] == ["my counts"]
    # the caption names the key the CLI and run specs take, not the label pickers show
    key = datasets.list_datasets()[0]["key"]
    assert key != "my counts" and any(c.value.startswith(f"Key {key} · ") for c in at.caption)
    # the saved file leaves the uploader (and the memory Streamlit keeps it in): ready for the next
    assert at.file_uploader[0].value is None
    assert next(b for b in at.button if b.label == "Load file").disabled
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Cells"] == "600" and metrics["Genes"] == "200"
    assert any(m.value.startswith("**X holds:** counts") for m in at.markdown)
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any("Genes detected" in t for t in titles) and any("mitochondrial" in t for t in titles)


def test_data_page_bad_upload_is_one_line_and_page_still_works(counts_file):
    at = app("data")
    _upload(at, "broken.h5ad", b"this is not an hdf5 file")
    # shown escaped (ui.state.md): the text reads the same, and no user string renders as markdown
    assert errors(at) == [r"broken.h5ad is not a readable .h5ad file \(truncated or not HDF5\)."]
    with open(counts_file, "rb") as fh:
        _upload(at, "good.h5ad", fh.read())
    assert [d["name"] for d in datasets.list_datasets()] == ["good"]


def test_data_page_server_path_is_off_by_default():
    at = app("data")
    assert at.text_input[1].disabled
    assert any("SCWB_DATA_ROOTS" in c.value for c in at.caption)


def test_data_page_embedding_on_pbmc68k():
    datasets.save(load_demo("pbmc68k_reduced"), "pbmc")
    at = app("data")
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    # embeddings moved to Explore: a caption and a link here
    assert any(c.value.startswith("2 embedding(s) stored") for c in at.caption)
    assert any("explore" in p.proto.page for p in at.get("page_link"))
    explore = app("explore")
    spec = json.loads(explore.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["title"]["text"].startswith("X_umap")
    # X is scaled: QC comes from the obs columns scanpy stored, as percentages
    assert any("QC columns stored in obs" in c.value for c in at.caption)
    assert any("mitochondrial" in t for t in titles)


def _small_file(tmp_path, name: str, n: int, seed: int) -> bytes:
    import anndata as ad
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    a = ad.AnnData(
        X=rng.poisson(2, (n, 8)).astype(np.float32),
        obs=pd.DataFrame(
            {"label": pd.Categorical(["a", "b"] * (n // 2))}, index=[f"c{i}" for i in range(n)]
        ),
    )
    a.var_names = [f"G{i}" for i in range(8)]
    a.write_h5ad(tmp_path / name)
    return (tmp_path / name).read_bytes()


def test_two_sessions_upload_one_name_and_keep_their_own_data(tmp_path):
    """Two tabs upload different files under one name: both datasets exist under different
    keys, and each tab's current dataset stays its own whatever the other tab does."""
    first, second = app("data"), app("data")
    _upload(first, "cells.h5ad", _small_file(tmp_path, "a.h5ad", 40, 0))
    _upload(second, "cells.h5ad", _small_file(tmp_path, "b.h5ad", 20, 1))
    rows = datasets.list_datasets()
    assert [r["name"] for r in rows] == ["cells", "cells"]
    keys = {r["n_obs"]: r["key"] for r in rows}
    assert len(set(keys.values())) == 2
    assert first.session_state["dataset"] == keys[40]
    assert second.session_state["dataset"] == keys[20]
    for at, n in ((first.run(), 40), (second.run(), 20)):  # each rerun keeps its own
        assert {m.label: m.value for m in at.metric}["Cells"] == str(n)
        assert datasets.load(at.session_state["dataset"]).n_obs == n
        assert (
            datasets.fingerprint(at.session_state["dataset"])
            == datasets.meta(at.session_state["dataset"])["fingerprint"]
        )
    # a brand-new session starts from the last choice; the two open ones are unchanged
    third = app("data")
    assert third.session_state["dataset"] == keys[20]
    picker = next(s for s in third.selectbox if s.label == "Current dataset")
    picker.set_value(keys[40]).run()
    assert second.run().session_state["dataset"] == keys[20]
    assert {m.label: m.value for m in second.metric}["Cells"] == "20"
    # a sidebar link leads to a bare address (/train): the page puts the tab's dataset back
    # in it, so that a refresh there keeps this tab's dataset, not the other tab's last pick
    # (a browser pass: the refreshed tab moved to the other tab's dataset)
    linked = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    linked.session_state["dataset"] = keys[20]  # this tab's pick; the workspace's seed: 40
    linked.session_state["_dataset_seeded"] = True
    linked.run().switch_page("pages/train.py").run()
    assert linked.query_params["dataset"] in (keys[20], [keys[20]])
    refreshed = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    refreshed.query_params["dataset"] = keys[20]  # the address the refresh reloads
    refreshed.switch_page("pages/data.py").run()
    assert refreshed.session_state["dataset"] == keys[20]
    assert {m.label: m.value for m in refreshed.metric}["Cells"] == "20"


def test_data_page_shows_the_cell_names_of_data_without_annotations(tmp_path):
    """A browser pass: 'Cells (first 200)' of a file with no obs column was an empty, unnamed
    column."""
    import anndata as ad
    import numpy as np

    a = ad.AnnData(np.ones((6, 3), np.float32))
    a.obs_names = [f"cell{i}" for i in range(6)]
    path = tmp_path / "bare.h5ad"
    a.write_h5ad(path)
    at = app("data")
    _upload(at, "bare.h5ad", path.read_bytes())
    assert any("the cells carry names only" in c.value for c in at.caption)
    table = next(d.value for d in at.dataframe if "cell" in d.value.columns)
    assert table["cell"].tolist() == [f"cell{i}" for i in range(6)]


def test_data_page_deletes_the_current_dataset_unless_a_run_uses_it(tmp_path, workspace):
    from engine import runs

    at = app("data")
    _upload(at, "cells.h5ad", _small_file(tmp_path, "a.h5ad", 40, 0))
    key = at.session_state["dataset"]
    run = workspace / "runs" / "r1"
    run.mkdir(parents=True)
    runs.write_json(run / "run.json", {"dataset_key": key})
    runs.write_json(run / "status.json", {"state": "running"})

    def click(label: str) -> None:
        next(b for b in at.button if b.label == label).click().run()

    click("Delete dataset")  # refused at once while a run uses it, before any question
    assert not at.exception
    assert len(errors(at)) == 1 and "used by the running run r1" in errors(at)[0]
    assert datasets.path(key).exists()
    assert not any("cannot be undone" in w.value for w in at.warning)
    runs.write_json(run / "status.json", {"state": "completed"})
    click("Delete dataset")
    assert datasets.path(key).exists()  # one click asks first (it deleted at once)
    asked = " ".join(w.value for w in at.warning)
    assert "cannot be undone" in asked and "1 run used it" in asked
    click("Keep it")
    assert datasets.path(key).exists()
    assert not any("cannot be undone" in w.value for w in at.warning)
    click("Delete dataset")
    click("Yes, delete")
    assert not at.exception and not errors(at)
    assert datasets.list_datasets() == []
    assert any("No dataset yet" in i.value for i in at.info)


def test_data_page_disk_full_on_upload_is_one_line(tmp_path, workspace, monkeypatch):
    import errno

    from engine import io

    def full(fh, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    # a context, not monkeypatch.undo(): that would also undo the workspace fixture's SCWB_HOME
    with monkeypatch.context() as m:
        m.setattr(io, "_write_chunk", full)
        at = app("data")
        _upload(at, "cells.h5ad", _small_file(tmp_path, "a.h5ad", 40, 0))
        assert len(errors(at)) == 1 and "The disk is full" in errors(at)[0]
        assert [p for p in (workspace / "datasets").rglob("*") if p.is_file()] == []
    _upload(at, "cells.h5ad", _small_file(tmp_path, "a.h5ad", 40, 0))
    assert not errors(at) and len(datasets.list_datasets()) == 1
    assert [p.name for p in (workspace / "datasets").glob("*.h5ad")] == [
        datasets.list_datasets()[0]["key"] + ".h5ad"
    ]


def test_user_strings_never_render_as_markdown(tmp_path):
    """Dataset names, layer keys and run fields reach Data and Home escaped: no link, image,
    bold text or HTML from user strings."""
    import re

    import anndata as ad
    import numpy as np

    hostile = "[click](http://evil.example) ![x](http://evil.example/i.png) **b** <img src=x>"
    a = ad.AnnData(X=np.random.default_rng(0).poisson(2, (20, 5)).astype(np.float32))
    a.layers["[click](javascript:alert) **b** <img src=x>"] = a.X.copy()  # no '/' in HDF5 keys
    a.write_h5ad(tmp_path / "h.h5ad")
    at = app("data")
    at.file_uploader[0].upload("h.h5ad", (tmp_path / "h.h5ad").read_bytes()).run()
    at.text_input[0].set_value(hostile).run()
    next(b for b in at.button if b.label == "Load file").click().run()
    assert not at.exception and not errors(at), errors(at)
    home = app()
    shown = [
        *(m.value for m in at.markdown),
        *(s.value for s in at.success),
        *(c.value for c in at.caption),
        *(m.value for m in home.markdown),
        *(b.label for b in home.button),
    ]
    assert any("click" in t for t in shown)
    unescaped = re.compile(r"(?<!\\)[\[\]<>!]|(?<!\\)\*\*b")
    for t in shown:
        if "click" in t:
            assert not unescaped.search(t), t


def test_unannotated_data_gets_clusters_to_train_a_classifier_on(counts_adata):
    """A dataset with no label column: Train says Preprocess can add clusters; Preprocess ticks
    Leiden by default, Preview runs it (in a child process) and says how many clusters; once
    saved, the Train page takes obs['leiden'] as the classifier's label."""
    bare = counts_adata[counts_adata.obs["condition"] == "control"].copy()
    bare.obs = bare.obs[[]]
    datasets.save(bare, "bare")
    at = app("train")
    assert any("Preprocess can add Leiden clusters" in e for e in errors(at))
    at = app("preprocess")
    box = next(c for c in at.checkbox if c.label.startswith("Leiden clusters"))
    assert box.value and any("No obs column" in c.value for c in at.caption)
    next(b for b in at.button if b.label == "Preview").click().run(timeout=60)
    # Leiden runs in the background: the page says so, and other pages can be used meanwhile
    assert any("in the background" in c.value for c in at.caption), [c.value for c in at.caption]
    at.switch_page("pages/data.py").run()
    at.switch_page("pages/preprocess.py").run()  # back: the Preview is still there
    finish_preview(at)
    assert not at.exception and not errors(at)
    assert list(at.dataframe[-1].value["step"])[-1] == "leiden"
    notes = [c.value.replace("\\", "") for c in at.caption if c.value.startswith(":material/info:")]
    assert ":material/info: **leiden**: 4 clusters in obs['leiden'] (resolution 1)" in notes, notes
    next(b for b in at.button if b.label == "Save").click().run(timeout=60)
    assert not errors(at)
    at = app("train")
    assert not errors(at)
    assert (
        at.selectbox(key=next(s.key for s in at.selectbox if s.label == "Label column")).value
        == "leiden"
    )


def test_preprocess_preview_and_save(counts_file):
    from engine import io

    datasets.save(io.read(counts_file), "raw")
    at = app("preprocess")
    assert any("counts" in c.value for c in at.caption)
    preview = next(b for b in at.button if b.label == "Preview")
    preview.click().run()
    assert not at.exception and not errors(at)
    report = at.dataframe[-1].value
    assert list(report["step"])[:2] == ["input", "filter_cells"]
    # ticked on a set of 200 genes, HVG offers half of them (it offered all 200: no selection)
    next(c for c in at.checkbox if c.label == "Highly variable genes").check().run()
    box = next(n for n in at.number_input if n.label == "number of genes")
    assert box.value == 100 and any(
        "about half of them (100, in hundreds) are offered" in c.value for c in at.caption
    )
    # a step that changes nothing says so (200 genes, HVG asks for as many)
    box.set_value(200).run()
    assert any("genes: 200 keeps them all" in c.value for c in at.caption)
    # a visit to another page keeps the form (it came back with its defaults: a browser pass)
    at.switch_page("pages/runs.py").run()
    at.switch_page("pages/preprocess.py").run()
    assert next(c for c in at.checkbox if c.label == "Highly variable genes").value
    assert next(n for n in at.number_input if n.label == "number of genes").value == 200
    next(b for b in at.button if b.label == "Preview").click().run()
    assert "hvg" in list(at.dataframe[-1].value["step"])
    notes = [
        c.value.replace("\\", "")  # escaped markdown: shown as typed
        for c in at.caption
        if c.value.startswith(":material/info:")
    ]
    assert notes == [":material/info: **hvg**: 200 genes asked for and 200 left: all kept"]
    save = next(b for b in at.button if b.label == "Save")
    save.click().run()
    assert "raw_pp" in [d["name"] for d in datasets.list_datasets()]
    # a browser pass: a second preprocessing of the same file was offered the first one's name
    # and saved under it; the two then read alike on Train, Runs and Compare
    raw = next(d["key"] for d in datasets.list_datasets() if d["name"] == "raw")
    at = app("preprocess")
    at.selectbox[0].set_value(raw).run()
    next(b for b in at.button if b.label == "Preview").click().run()
    name = next(t for t in at.text_input if t.label == "Save as dataset")
    assert name.value == "raw_pp_2"
    name.set_value("raw_pp").run()
    next(b for b in at.button if b.label == "Save").click().run()
    assert errors(at) == ["A dataset is already named 'raw_pp': save this one under another name."]
    assert [d["name"] for d in datasets.list_datasets()].count("raw_pp") == 1


def test_data_page_offers_label_columns_first_and_at_most_a_hundred(counts_adata):
    """A file with thousands of obs columns offered them all to split the QC by."""
    from engine import runs, workspace

    wide = counts_adata.copy()
    for i in range(150):
        wide.obs[f"flag{i}"] = np.where(np.arange(wide.n_obs) % 2, "a", "b")
    runs.write_json(workspace.home() / "state.json", {"dataset": datasets.save(wide, "wide")})
    at = app("data")
    split = next(s for s in at.selectbox if s.label == "Split by")
    assert len(split.options) == 101 and split.options[1] == "cell_type"


def test_preprocess_offers_adata_raw_under_a_scaled_x():
    """pbmc68k_reduced: X z-scored, log-normalised values in adata.raw. The page said only
    that X was scaled; it now says where the values are and starts from them."""
    import scanpy as sc

    datasets.save(sc.datasets.pbmc68k_reduced(), "pbmc68k")
    at = app("preprocess")
    assert any("adata.raw keeps 765 genes of log-normalised values" in w.value for w in at.warning)
    box = next(c for c in at.checkbox if c.label.startswith("Start from adata.raw"))
    assert box.value and box.label == "Start from adata.raw (765 genes, log-normalised)"
    next(b for b in at.button if b.label == "Preview").click().run(timeout=60)
    assert not at.exception and not errors(at)
    assert list(at.dataframe[-1].value["step"]) == ["input", "from_raw"]


def test_preprocess_after_save_starts_from_the_new_datasets_suggestions(counts_file):
    """After Save the new dataset is current: its form shows what suits it (nothing ticked
    for a normalised, scaled X), not the old form's ticks, which would apply the recipe twice."""
    from engine import io

    datasets.save(io.read(counts_file), "raw")
    at = app("preprocess")
    ticked = {c.label for c in at.checkbox if c.value}
    assert {"Filter cells", "Normalise library size + log1p"} <= ticked
    next(c for c in at.checkbox if c.label == "Scale").check().run()
    next(b for b in at.button if b.label == "Preview").click().run()
    next(b for b in at.button if b.label == "Save").click().run()
    assert not at.exception and not errors(at)
    assert any("Saved as" in s.value for s in at.success)
    at.run()
    assert any("already looks scaled" in w.value for w in at.warning)
    assert {c.label for c in at.checkbox if c.value} == set()
    assert next(b for b in at.button if b.label == "Preview").disabled  # nothing to apply


def test_train_page_submits_two_models(dataset):
    at = app("train")
    assert at.radio[0].value == "classify"
    assert set(at.multiselect[0].value) == {"logreg", "mlp", "sk_logreg"}
    at.multiselect[0].set_value(["logreg", "sk_logreg"]).run()
    next(n for n in at.number_input if n.label == "Max epochs").set_value(2).run()
    next(b for b in at.button if b.label == "Submit").click().run()
    assert not errors(at), errors(at)
    assert any("Submitted 2 run" in s.value for s in at.success)
    rows = jobs.list_jobs()
    assert len(rows) == 2 and len({r["group"] for r in rows}) == 1
    for r in rows:
        assert jobs.wait(r["path"], timeout=120)["state"] == "completed"


def test_train_page_second_click_does_not_submit_twice(dataset):
    """A double click on Submit (or a click while the page reruns) sent the same settings
    twice and trained every run twice; now the second says so, and another seed submits."""
    at = app("train")
    at.multiselect[0].set_value(["sk_logreg"]).run()
    submit = next(b for b in at.button if b.label == "Submit")
    submit.click().run()
    assert any("Submitted 1 run" in s.value for s in at.success)
    next(b for b in at.button if b.label == "Submit").click().run()
    assert not errors(at), errors(at)
    assert any("Not submitted twice" in i.value for i in at.info)
    assert len(jobs.list_jobs()) == 1
    seed = next(n for n in at.number_input if n.label.startswith("Seed"))
    seed.set_value(seed.value + 1).run()
    next(b for b in at.button if b.label == "Submit").click().run()
    assert any("Submitted 1 run" in s.value for s in at.success)
    assert len(jobs.list_jobs()) == 2
    for r in jobs.list_jobs():
        assert jobs.wait(r["path"], timeout=120)["state"] == "completed"


def test_train_page_reads_the_transformed_cytometry_layer(workspace):
    """Raw cytometry intensities in X and their arcsinh in a layer (as the CyTOF set ships):
    the models read the layer by default; X is still a choice, with a warning."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from engine import runs

    rng = np.random.default_rng(0)
    x = (rng.gamma(2.0, 200.0, (300, 12)) - 20).astype(np.float32)  # large, small negative noise
    a = ad.AnnData(x, obs=pd.DataFrame({"cluster": rng.choice(["a", "b", "c"], 300)}))
    a.obs_names = [f"c{i}" for i in range(300)]
    a.layers["arcsinh5"] = np.arcsinh(x / 5)
    name = datasets.save(a, "cytof", source="test")
    runs.write_json(workspace / "state.json", {"dataset": name})
    at = app("train")
    at.radio[0].set_value("reconstruct").run()
    matrix = next(s for s in at.selectbox if s.label == "Input matrix")
    assert matrix.value == "arcsinh5"
    assert not any("raw cytometry intensities" in w.value for w in at.warning)
    matrix.set_value("X").run()
    assert any("raw cytometry intensities" in w.value for w in at.warning)


def test_train_page_shows_the_counts_layer_a_count_model_reads(dataset):
    """A browser pass: the form said 'Input matrix: X' while the VAE read layers['counts']."""
    at = app("train")
    at.radio[0].set_value("embed").run()
    at.multiselect[0].set_value(["vae"]).run()
    matrix = next(s for s in at.selectbox if s.label == "Input matrix")
    assert matrix.value == "counts"
    at.multiselect[0].set_value(["vae", "pca_embed"]).run()
    matrix = next(s for s in at.selectbox if s.label == "Input matrix")
    assert matrix.value == "X"
    assert "vae reads layers['counts'] (raw counts) instead of X; the other models read X." in [
        c.value for c in at.caption
    ]


def test_train_page_perturb_choices_come_from_data(dataset):
    at = app("train")
    at.radio[0].set_value("perturb").run()
    boxes = {s.label: s for s in at.selectbox}
    assert boxes["Condition column"].value == "condition"
    assert set(boxes["Control value"].options) == {"control", "stimulated"}
    assert "B cell" in boxes["Cell type to predict"].options


def _finished(dataset_name, model, **kw):
    """A run trained in this process straight into the workspace, as a finished job leaves it."""
    from engine import workspace

    out = workspace.runs_dir() / f"run-{model}"
    train.run(
        RunSpec(
            model=model,
            data=str(datasets.path(dataset_name)),
            dataset_name=dataset_name,
            dataset_key=dataset_name,  # as the Train page records it
            out=str(out),
            **kw,
        )
    )
    return out.name


def test_runs_page_lists_and_shows_curve(dataset):
    _finished(dataset, "mlp", label_key="cell_type", epochs=3)
    at = app("runs")
    df = at.dataframe[0].value
    assert list(df["state"]) == ["completed"] and list(df["model"]) == ["mlp"]
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {t["name"] for t in fig["data"]} == {"train", "validation"}
    assert next(b for b in at.button if b.label == "Cancel run").disabled


def test_results_classifier(dataset):
    _finished(dataset, "mlp", label_key="cell_type", epochs=3)
    at = app("results")
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any("Confusion" in t for t in titles) and any("F1 per class" in t for t in titles)
    assert any(b.label == "Reproduce script (.py)" for b in at.get("download_button"))
    assert not any("fewer than 5 test cells" in c.value for c in at.caption)
    assert any("600 cells × 200 genes" in c.value for c in at.caption)  # was '([600, 200])'

    # a class with a test cell or two (a browser pass: F1 1.0 and 0 on one cell each)
    from engine import workspace

    path = workspace.runs_dir() / "run-mlp" / "metrics.json"
    m = json.loads(path.read_text())
    m["confusion"][0] = [1] + [0] * (len(m["classes"]) - 1)
    path.write_text(json.dumps(m))
    at = app("results")
    first = m["classes"][0].replace("_", "\\_")
    assert any(
        c.value.startswith(f"1 class with fewer than 5 test cells ({first}: 1)") for c in at.caption
    ), [c.value for c in at.caption]


def test_results_autoencoder_heatmaps(dataset):
    _finished(dataset, "autoencoder", epochs=2, label_key="cell_type")
    at = app("results")
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert (
        any(t.startswith("Input") for t in titles)
        and any(t.startswith("Reconstruction") for t in titles)
        and any("Error" in t for t in titles)
    )
    assert any("abnormality" in t for t in titles)


def test_results_scgen(dataset):
    _finished(
        dataset,
        "scgen",
        epochs=2,
        **SCGEN_B_CELLS,
        params={"n_hidden": 64, "n_latent": 8},
    )
    at = app("results")
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any(t.startswith("scGen, B cell: R²") for t in titles)
    assert any(t.startswith("Baseline: control + mean shift") for t in titles)
    assert any("Top DEGs" in t for t in titles)


def test_compare_two_runs(dataset):
    _finished(dataset, "mlp", label_key="cell_type", epochs=3)
    _finished(dataset, "sk_logreg", label_key="cell_type")
    at = app("compare")
    assert len(at.multiselect[0].value) == 2
    # one dataset: not repeated in every run's name (the caption says it once)
    assert at.multiselect[0].options and not any(dataset in o for o in at.multiselect[0].options)
    table = at.dataframe[0].value
    assert set(table.columns) >= {"run", "test_accuracy", "test_f1_macro"}
    assert "Same data, seed and label column: every run was scored on the same test cells." in [
        c.value for c in at.caption
    ]
    cols = json.loads(at.dataframe[0].proto.columns)  # long names get the width they need
    assert cols["test_f1_macro"]["width"] >= 7 * len("Macro F1 (test)")
    assert "c7e9c0" in str(at.dataframe[0].proto.arrow_data.styler.styles)  # the best marked
    # ...from one run each: said, with the way to know (a browser pass read a 0.009 win)
    assert any(
        c.value.startswith("Best values marked from one run each") and "3 seeds" in c.value
        for c in at.caption
    )
    # every run unpicked: the page says what to do instead of going blank (a browser pass)
    at.multiselect[0].set_value([]).run(timeout=60)
    assert not at.dataframe
    assert [i.value for i in at.info] == [
        "Pick one run or more above to see their metrics side by side."
    ]


def test_compare_shows_a_dash_for_a_metric_a_run_lacks(dataset):
    """A browser pass: a metric one run lacks (a run saved before the metric existed, a model
    that does not compute it) read "None" in the table: a dash."""
    from engine import workspace

    _finished(dataset, "mlp", label_key="cell_type", epochs=3)
    older = _finished(dataset, "sk_logreg", label_key="cell_type")
    path = workspace.runs_dir() / older / "metrics.json"
    metrics = json.loads(path.read_text())
    del metrics["test_f1_macro"]
    path.write_text(json.dumps(metrics))
    at = app("compare")
    table = at.dataframe[0].value
    assert table["test_f1_macro"].isna().sum() == 1
    assert at.dataframe[0].proto.placeholder == "-"


def test_compare_marks_no_best_value_across_datasets(dataset, lognorm_adata):
    """A browser pass: with runs of two datasets picked, the table still marked one dataset's
    MLP the best against the other's runs, under its own 'compare with care' warning."""
    _finished(dataset, "sk_logreg", label_key="cell_type")
    other = lognorm_adata[::-1].copy()
    other.X = other.X * 1.5
    name = datasets.save(other, "other", source="test")
    mlp = _finished(name, "mlp", label_key="cell_type", epochs=2)
    at = app("compare")
    # the tab's dataset's runs are picked first (a browser pass: another dataset's newest runs
    # were shown under this dataset's address); the user adds the other's
    assert len(at.dataframe[0].value) == 1 and at.multiselect[0].value != [mlp]
    assert {o.split(" · ")[1] for o in at.multiselect[0].options} == {dataset, name}
    at.multiselect[0].set_value(at.multiselect[0].value + [mlp]).run()
    assert len(at.dataframe[0].value) == 2
    assert "c7e9c0" not in str(at.dataframe[0].proto.arrow_data.styler.styles)
    assert "No best value marked: these runs were scored on different cells." in [
        c.value for c in at.caption
    ]


def test_compare_marks_cancelled_runs_and_names_rows_without_the_shared_dataset(dataset):
    """A browser pass: a VAE cancelled at epoch 10 of 100 stood beside the PCA as if finished,
    and the long row names ('model · dataset · id · baseline: ...') were cut off."""
    from engine import runs, workspace

    done = _finished(dataset, "mlp", label_key="cell_type", epochs=3)
    stopped = _finished(dataset, "sk_logreg", label_key="cell_type")
    runs.update_status(workspace.runs_dir() / stopped, state="cancelled")
    at = app("compare")
    table = at.dataframe[0].value
    assert set(table["run"]) == {f"mlp · {done}", f"sk_logreg · {stopped} · cancelled"}
    esc = lambda t: t.replace("-", "\\-").replace("_", "\\_")  # noqa: E731 (markdown)
    assert f"Dataset: {esc(dataset)}." in [c.value for c in at.caption]
    warned = " ".join(w.value for w in at.warning)
    assert f"Cancelled before they finished: sk\\_logreg · {esc(stopped)} · cancelled" in warned
    cols = json.loads(at.dataframe[0].proto.columns)
    assert cols["run"]["pinned"] is True


def test_compare_embeddings_scored_on_leiden_clusters_say_they_favour_pca(dataset, lognorm_adata):
    from engine import runs, workspace

    clustered = lognorm_adata.copy()
    clustered.obs["leiden"] = clustered.obs["cell_type"].astype(str)
    name = datasets.save(clustered, "clustered", source="test")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    run = _finished(name, "pca_embed", label_key="leiden", epochs=1)
    at = app("compare")
    said = " ".join(i.value for i in at.info).replace("\\", "")  # Markdown escapes
    assert "clusters (leiden)" in said and "PCA baseline" in said
    # and on the run's own Results, where a browser pass read the scores without it
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    at.query_params["run"] = run
    at.run()
    at.switch_page("pages/results.py")
    said = " ".join(c.value for c in at.run().caption)
    said = said.replace("\\", "")
    assert "measured against clusters (leiden)" in said and "favour the PCA baseline" in said
    # a reconstruction without latent scores: nothing to caution about (it was said there too)
    _finished(name, "pca", label_key="leiden", epochs=1)
    at = app("compare")
    at.radio[0].set_value("reconstruct").run()
    assert not any("PCA baseline" in i.value for i in at.info)


def test_compare_without_a_label_column_does_not_claim_one(dataset):
    """Reconstruction runs without labels: the caption named a label column none of them used."""
    _finished(dataset, "pca", epochs=1)
    _finished(dataset, "autoencoder", epochs=2)
    at = app("compare")
    captions = [c.value for c in at.caption]
    assert "Same data and seed: every run was scored on the same test cells." in captions
    assert not any("label column" in c for c in captions)


def test_results_vae_embedding(dataset):
    from engine import embedding, workspace

    run = _finished(dataset, "vae", epochs=2, label_key="cell_type", params={"kl_warmup": 1})
    at = app("results")
    assert not errors(at)
    # the latent UMAP is computed by the background engine: wait for it, then look again
    for _ in range(360):
        if embedding.read(workspace.runs_dir() / run, "X_vae")["state"] != "computing":
            break
        __import__("time").sleep(0.5)
    at.run()
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any(t.startswith("UMAP of X_vae") for t in titles)
    assert any(t.startswith("Input") for t in titles), "counts vs reconstructed counts heatmaps"
    assert "test_elbo" in at.dataframe[0].value.columns


def test_results_downloads_are_lazy_and_work(dataset):
    _finished(dataset, "mlp", label_key="cell_type", epochs=2)
    at = app("results")
    labels = [b.label for b in at.get("download_button")]
    assert {
        "Annotated .h5ad",
        "Model weights (.pt)",
        "Metrics (JSON)",
        "Metrics (CSV)",
        "Reproduce script (.py)",
        "Whole run (.zip)",
        "Figure as interactive HTML",
        "Figure as PNG",
    } <= set(labels)
    # the figures are offered by their titles, not their code names ("loss_curves")
    pick = next(s for s in at.selectbox if s.label == "Figure")
    assert "Loss per epoch" in pick.options and "loss_curves" not in pick.options


def test_runs_page_baseline_has_no_false_progress_message(dataset):
    _finished(dataset, "sk_logreg", label_key="cell_type")
    at = app("runs")
    # no epochs, so no epoch chart (while fitting it was an empty one: "No epoch finished yet")
    assert not at.get("plotly_chart")
    assert "A scikit-learn baseline is fitted in one step: it has no loss curve." in [
        c.value for c in at.caption
    ]


def test_train_page_uses_each_models_defaults_when_left_empty(dataset):
    at = app("train")
    at.multiselect[0].set_value(["logreg", "mlp"]).run()
    next(b for b in at.button if b.label == "Submit").click().run()
    assert not errors(at), errors(at)
    specs = {
        r["model"]: json.loads((Path(r["path"]) / "run.json").read_text()) for r in jobs.list_jobs()
    }
    assert specs["logreg"]["lr"] == 1e-2 and specs["mlp"]["lr"] == 1e-3
    assert specs["mlp"]["epochs"] == 50 and specs["mlp"]["batch_size"] == 128
    for r in jobs.list_jobs():
        jobs.cancel(r["path"])
        jobs.wait(r["path"], timeout=60)


def test_train_page_runs_each_model_over_several_seeds_in_one_group(dataset):
    at = app("train")
    at.multiselect[0].set_value(["logreg", "sk_logreg"]).run()
    seeds_radio = next(r for r in at.radio if r.label == "Seeds per model")
    assert seeds_radio.value == 1  # one run per model unless asked
    seeds_radio.set_value(3).run()
    labels = next(r for r in at.radio if r.label == "Seeds per model").options
    # a seed changed after the count: the count's label (what the browser sends back) is the
    # same, so the choice stays (a label naming the seeds reset it to 1 run)
    seed = next(n for n in at.number_input if n.label.startswith("Seed"))
    seed.set_value(5).run()
    seeds_radio = next(r for r in at.radio if r.label == "Seeds per model")
    assert seeds_radio.value == 3 and seeds_radio.options == labels
    assert "Seeds 5 to 7, one run each per model." in [c.value for c in at.caption]
    next(b for b in at.button if b.label == "Submit").click().run()
    assert not errors(at), errors(at)
    specs = [json.loads((Path(r["path"]) / "run.json").read_text()) for r in jobs.list_jobs()]
    assert sorted((s["model"], s["seed"]) for s in specs) == [
        (m, k) for m in ("logreg", "sk_logreg") for k in (5, 6, 7)
    ]
    groups = {s["group"] for s in specs}
    assert len(groups) == 1 and groups.pop().startswith("seeds-")
    for r in jobs.list_jobs():
        jobs.cancel(r["path"])
        jobs.wait(r["path"], timeout=60)


def test_results_say_whether_test_donors_were_seen_in_training(lognorm_adata):
    """A browser pass: a classifier's 0.996 on five donors read as an accuracy on new donors."""
    import shutil

    from engine import runs, workspace

    a = lognorm_adata.copy()
    a.obs["donor"] = pd.Categorical([f"d{i % 5}" for i in range(a.n_obs)])
    name = datasets.save(a, "donors", source="test")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    run = _finished(name, "sk_logreg", label_key="cell_type")
    captions = [c.value for c in app("results").caption]
    assert any(c.startswith("Test cells drawn at random from all the cells") for c in captions)
    shutil.rmtree(workspace.runs_dir() / run)
    _finished(name, "sk_logreg", label_key="cell_type", split_by="donor")
    captions = [c.value for c in app("results").caption]
    held = next(c for c in captions if c.startswith("Test cells: whole groups of donor held out"))
    # the validation group and the cells trained on are said too (a browser pass), each group
    # named with its column ("test: 3, 764 cells" read as 3,764 cells with integer donors)
    assert re.search(
        r"groups the model never saw\. Test: donor d\d(, d\d)* \([\d,]+ cells\); "
        r"validation: donor d\d \([\d,]+ cells\); training: [\d,]+ of 600 cells\.$",
        held,
    ), held


def test_abnormality_boxes_tell_reference_cells_trained_on_from_held_out(dataset):
    """A browser pass: the reference groups' boxes mixed the cells trained on (low scores by
    design) with the held-out ones the AUROC uses, and nothing marked which groups were the
    reference."""
    _finished(
        dataset, "autoencoder", epochs=2, label_key="cell_type", train_on={"condition": ["control"]}
    )
    at = app("results")
    assert (
        next(s for s in at.selectbox if s.label == "Order and group cells by").value == "condition"
    )
    fig = next(
        json.loads(c.proto.spec)
        for c in at.get("plotly_chart")
        if "abnormality" in json.loads(c.proto.spec)["layout"]["title"]["text"]
    )
    boxes = {t["name"] for t in fig["data"] if t["type"] == "box"}
    assert boxes == {"control · held out", "control · trained on", "stimulated"}
    assert "cells trained on, and held-out cells the AUROC uses" in fig["layout"]["title"]["text"]


def test_cytometry_data_names_its_markers(counts_adata):
    """A browser pass on CytOF: 'Loaded 3,000 cells x 23 genes', a 'Genes' tile and 'Search
    genes' on a mass-cytometry panel."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 2, (300, 5)), rng.lognormal(5, 1, (300, 5))], axis=1)
    datasets.save(ad.AnnData(x.astype(np.float32)), "cytof")
    at = app("data")
    assert "Markers" in [m.label for m in at.metric]
    at = app("explore")
    assert any(r.options == ["obs column", "marker"] for r in at.radio), [
        r.options for r in at.radio
    ]


def test_hvg_on_a_panel_of_scaled_values_is_warned_before_preview():
    """A browser pass: HVG ticked on an 11-gene MinMax panel (krumsiek11) dropped the lineage
    factors without a word. The form says, before Preview, what the step would rank and what a
    panel loses; after a logCPM step ticked above it, only the panel is said."""

    from engine import runs, workspace

    rng = np.random.default_rng(0)
    panel = ad.AnnData(rng.random((80, 11)).astype(np.float32))
    panel.obs["cell_type"] = pd.Categorical(rng.choice(["Ery", "Mk", "Mo"], 80))
    name = datasets.save(panel, "panel", source="test")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = app("preprocess")
    next(c for c in at.checkbox if c.label == "Highly variable genes").check().run()
    warned = " ".join(w.value for w in at.warning)
    assert "Genes ranked on scaled (MinMax) values" in warned, warned
    assert "11 genes in all, as in a targeted panel" in warned
    next(n for n in at.number_input if n.label == "number of genes").set_value(11).run()
    assert not any("targeted panel" in w.value for w in at.warning)  # keeps them all


def test_preprocess_form_survives_a_refresh(dataset):
    """A browser pass: min genes 200, logCPM, 1,000 HVG and Scale were all back to their
    suggestions after a refresh. The form of each dataset is kept on disk for new sessions;
    a damaged or foreign forms.json is ignored."""
    from engine import workspace

    def hvg_box(at):
        return next(c for c in at.checkbox if c.label == "Highly variable genes")

    at = app("preprocess")
    suggested = hvg_box(at).value
    hvg_box(at).set_value(not suggested).run()
    if not suggested:
        next(n for n in at.number_input if n.label == "number of genes").set_value(123).run()
    refreshed = app("preprocess")  # a new session: the form as left
    assert hvg_box(refreshed).value is (not suggested)
    if not suggested:
        hvg_n = next(n for n in refreshed.number_input if n.label == "number of genes")
        assert hvg_n.value == 123
    forms = workspace.home() / "forms.json"
    # every widget of the form has its type listed (else a refresh would not keep it)
    import re

    source = (ROOT / "pages" / "preprocess.py").read_text()
    widgets = set(re.findall(r'key=k\("(pp_\w+)"\)', source))
    form = source[source.index("FORM = ") : source.index("restore_form(f")]
    assert widgets == set(re.findall(r'"(pp_\w+)"', form)), widgets
    # damaged, or values of another type than their widget's (a text for a checkbox broke the
    # page for good: a review), or a key no widget has: ignored, the page as suggested
    wrong = {f"pp_hvg@{dataset}": "yes", f"pp_hvg_n@{dataset}": "many", f"pp_x@{dataset}": 1}
    wrong |= {f"pp_fc@{dataset}": {"x": 1}, f"pp_fc_min_genes@{dataset}": 1.5}
    for damage in ("[", json.dumps({f"preprocess@{dataset}": wrong})):
        forms.write_text(damage)
        again = app("preprocess")
        assert not again.exception and not errors(again)
        assert hvg_box(again).value is suggested


def test_page_links_carry_the_tabs_dataset(dataset):
    """A browser pass: Back needed two presses after a sidebar link, because the link led to a
    bare /train and the app then put the tab's dataset back in the address (a second history
    entry). The sidebar's own links carry the dataset (that they follow a dataset picked later
    in the run, and Back, are tested in Chromium: tests/test_browser.py)."""
    at = app("explore")
    links = [p.proto for p in at.sidebar.get("page_link")]
    assert [p.label for p in links] == [
        "Home", "Data", "Explore", "Preprocess", "Train", "Runs", "Results", "Compare"
    ]  # fmt: skip
    assert {p.query_string for p in links} == {f"dataset={dataset}"}
    at = app()  # the home page's links too
    assert all(p.proto.query_string.startswith(f"dataset={dataset}") for p in at.get("page_link"))


def test_a_dataset_deleted_in_another_tab_is_said_and_nothing_else_is_picked(
    dataset, lognorm_adata
):
    """A browser pass: tab 2 sat on Train for a dataset tab 1 then deleted; tab 2's Submit
    trained the newest dataset, another label, in silence. The tab now says its dataset was
    deleted and waits for a pick: no form, nothing submitted."""
    from engine import jobs

    at = app("train")
    assert at.selectbox[0].value == dataset
    other = datasets.save(lognorm_adata[:80].copy(), "newer", source="test")
    datasets.delete(dataset)  # another tab
    at.run()
    assert any(f"({dataset}) was deleted" in w.value.replace("\\", "") for w in at.warning)
    assert at.selectbox[0].value is None and at.selectbox[0].options == ["newer"]
    assert not [b for b in at.button if b.label == "Submit"]
    assert jobs.list_jobs() == []
    at.selectbox[0].set_value(other).run()  # picked: the page goes on, on that dataset
    assert not any("was deleted" in w.value for w in at.warning)
    assert [b for b in at.button if b.label == "Submit"]
    assert at.query_params["dataset"] == other


def test_label_counts_of_integer_groups_read_as_group_and_count(lognorm_adata, capsys):
    """A browser pass: integer donors were listed "3 806, 1 760", read as 3,806 cells."""
    from engine import cli, runs, workspace

    a = lognorm_adata.copy()
    a.obs["donor"] = pd.Categorical([i % 3 + 1 for i in range(a.n_obs)])
    name = datasets.save(a, "int_donors", source="test")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = app("data")
    table = next(t.value for t in at.dataframe if "counts" in t.value)
    counts = table.set_index("column").loc["donor", "counts"]
    assert counts == "1: 200, 2: 200, 3: 200", counts
    assert cli.main(["info", str(datasets.path(name))]) == 0
    assert "label donor: 3 values (1: 200, 2: 200, 3: 200)" in capsys.readouterr().out


def test_results_open_on_the_tabs_datasets_newest_run_without_a_history_entry(
    dataset, lognorm_adata
):
    """A browser pass: Results on dataset A showed the newest run of dataset B, and wrote it
    in the address (one more press of Back to leave the page)."""
    mine = _finished(dataset, "sk_logreg", label_key="cell_type")
    other = datasets.save(lognorm_adata[::-1].copy(), "other", source="test")
    _finished(other, "sk_logreg", label_key="cell_type")  # newer, of another dataset
    at = app("results")
    assert at.selectbox[0].value == mine
    assert "run" not in at.query_params


def test_two_datasets_of_one_name_keep_their_own_forms(dataset, lognorm_adata):
    """A hostile pass: the Preprocess form (and Train's choices) were kept by the dataset's
    name, so two uploads of one file name shared one form: edits on one showed on the other."""
    from engine import runs, workspace

    def hvg_box(at):
        return next(c for c in at.checkbox if c.label == "Highly variable genes")

    at = app("preprocess")
    suggested = hvg_box(at).value
    hvg_box(at).set_value(not suggested).run()
    twin = datasets.save(lognorm_adata[:300].copy(), "syn", source="test")  # the same name
    assert twin != dataset and datasets.label(twin) == datasets.label(dataset)
    runs.write_json(workspace.home() / "state.json", {"dataset": twin})
    assert hvg_box(app("preprocess")).value is suggested  # its own form, as suggested
    runs.write_json(workspace.home() / "state.json", {"dataset": dataset})
    assert hvg_box(app("preprocess")).value is (not suggested)  # the first's kept


def test_a_reconstruction_no_better_than_each_genes_mean_is_said(dataset):
    """A browser pass: an autoencoder whose test error (0.0555) was above that of predicting
    each gene's training mean (0.0545) was shown as a result, with an abnormality AUROC. The
    run records that floor, and Results says when the model is not below it."""
    import scipy.sparse as sp

    from engine import runs, workspace
    from engine.tasks.reconstruct import _gene_mean_mse

    rng = np.random.default_rng(0)
    x = rng.random((50, 7)) * (rng.random((50, 7)) < 0.5)
    train, test = np.arange(30), np.arange(30, 50)
    expect = ((x[test] - x[train].mean(axis=0)) ** 2).mean()
    assert _gene_mean_mse(x, train, test) == pytest.approx(expect)
    assert _gene_mean_mse(sp.csr_matrix(x), train, test) == pytest.approx(expect)

    run = _finished(dataset, "pca", label_key="cell_type")  # learns: below the floor
    path = workspace.runs_dir() / run / "metrics.json"
    metrics = json.loads(path.read_text())
    assert 0 < metrics["test_mse"] < metrics["genemean_test_mse"]
    said = "reconstructs the test cells no better than each gene's mean"
    assert not any(said in w.value for w in app("results").warning)
    runs.write_json(path, {**metrics, "test_mse": metrics["genemean_test_mse"] * 1.02})
    assert any(said in w.value for w in app("results").warning)


def test_a_reconstruction_barely_better_than_each_genes_mean_is_said(dataset):
    """A browser pass: an autoencoder at 0.0616 against the gene-mean floor's 0.0617 (0.2%
    lower) got no word, and its abnormality boxes by cluster read as a finding."""
    from engine import runs, workspace

    run = _finished(dataset, "pca", label_key="cell_type")
    path = workspace.runs_dir() / run / "metrics.json"
    metrics = json.loads(path.read_text())
    floor = metrics["genemean_test_mse"]
    runs.write_json(path, {**metrics, "test_mse": floor * 0.998})
    said = " ".join(w.value for w in app("results").warning)
    assert "barely better (0.2% lower error) than each gene's mean" in said
    runs.write_json(path, {**metrics, "test_mse": floor * 0.9})  # 10% lower: learned
    assert not any("each gene's mean" in w.value for w in app("results").warning)
