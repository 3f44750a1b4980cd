"""A million cells through the Data and Preprocess pages: the description and QC are stored when
a dataset is saved and read back, never recomputed; the Preprocess page says its memory first."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine import datasets, io, summary, workspace
from tests.conftest import ROOT, finish_preview

T = 60


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    at.run(timeout=T)
    at.switch_page(f"pages/{name}.py")
    at.run(timeout=T)
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_save_stores_description_and_qc_and_delete_removes_them(counts_adata):
    key = datasets.save(counts_adata, "c")
    assert datasets.description(key)["n_obs"] == counts_adata.n_obs
    qc = summary.read_qc(datasets.path(key), counts_adata.obs_names)
    assert qc is not None and list(qc.columns)[:2] == ["n_genes_by_counts", "total_counts"]
    datasets.delete(key)
    assert not summary.qc_path(datasets.path(key)).exists()


def test_import_file_stores_qc_from_the_reader_child(counts_file):
    key = datasets.import_file(counts_file, "c")
    assert datasets.description(key)["x_kind"] == "counts"
    assert summary.qc_path(datasets.path(key)).exists()
    assert not list((datasets.path(key).parent / datasets.INCOMING).glob("*.npz"))


def test_annotations_read_no_matrix(counts_file):
    a = summary.annotations(counts_file)
    assert a.X is None and a.n_obs == io.read(counts_file).n_obs


def test_data_page_reads_the_stored_description(counts_adata, monkeypatch):
    datasets.save(counts_adata, "c")

    def refuse(*_a, **_k):
        raise AssertionError("recomputed on view")

    monkeypatch.setattr(io, "describe", refuse)
    monkeypatch.setattr(io, "qc_metrics", refuse)
    monkeypatch.setattr(io, "read", refuse)  # not even the matrices are read
    at = page("data")
    assert [m.value for m in at.metric][:2] == [
        f"{counts_adata.n_obs:,}",
        f"{counts_adata.n_vars:,}",
    ]
    assert at.get("plotly_chart")  # the QC violins, from the stored QC


def test_preprocess_page_announces_memory_and_warns_over_budget(counts_adata, monkeypatch):
    datasets.save(counts_adata, "c")
    at = page("preprocess")
    assert any(c.value.startswith("Memory: about") for c in at.caption)
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", str(1000 / 2**30))
    at.run(timeout=T)
    assert any("over the memory budget" in w.value for w in at.warning)


@pytest.mark.parametrize("size_mb", [2048])
def test_upload_limit_allows_2_gb(size_mb):
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["maxUploadSize"] >= size_mb


def _preview_in_a_child(counts_adata, monkeypatch) -> tuple[AppTest, list]:
    """Preprocess's Preview clicked on a dataset taken as big (its recipe runs in a child);
    the page and the calls to ``pp_child.start``."""
    from engine import pp_child

    monkeypatch.setattr(pp_child, "IN_PROCESS_BYTES", 0)
    started: list = []
    real = pp_child.start
    monkeypatch.setattr(pp_child, "start", lambda *a, **k: started.append(a) or real(*a, **k))
    datasets.save(counts_adata, "raw")
    at = page("preprocess")
    next(b for b in at.button if b.label == "Preview").click().run(timeout=T)
    return at, started


def test_preprocess_preview_in_a_child_then_save(counts_adata, monkeypatch):
    at, calls = _preview_in_a_child(counts_adata, monkeypatch)
    assert calls and not at.exception and not at.error
    finish_preview(at)
    assert (
        not at.exception
        and not at.error
        and "Effect of each step" in [h.value for h in at.subheader]
    )
    next(b for b in at.button if b.label == "Save").click().run(timeout=T)
    assert not at.exception and "raw_pp" in [d["name"] for d in datasets.list_datasets()]
    incoming = datasets.path("x").parent / datasets.INCOMING
    assert not list(incoming.glob("*.h5ad")) and not list(incoming.glob("*.job"))


def test_data_page_warns_on_duplicated_names_from_the_description(counts_adata):
    a = counts_adata.copy()
    a.var_names = ["g"] * a.n_vars
    key = datasets.save(a, "dup")
    assert datasets.description(key)["unique_names"] is False
    at = page("data")
    said = " ".join(w.value for w in at.warning)
    assert f"Duplicated names ({a.n_vars - 1:,} gene names repeated)" in said  # says which
    next(b for b in at.button if b.label == "Make names unique").click().run()
    assert any(r["name"] == "dup (unique names)" for r in datasets.list_datasets())


def test_a_background_preview_survives_a_refresh_and_is_not_started_twice(
    counts_adata, monkeypatch
):
    """A browser pass: a refresh mid-preview lost the page's session; the preview went on
    unseen, Preview again started the same work a second time, and finished children stayed
    zombies. A new session takes the running job up; Stop removes it and its output."""
    import time

    from engine import pp_child

    at, started = _preview_in_a_child(counts_adata, monkeypatch)
    job = at.session_state["pp_job"][2]
    pid = pp_child._STARTED[job].pid
    again = page("preprocess")  # a refresh: a new session, the same settings
    assert again.session_state["pp_job"][2] == job  # taken up, not started again
    next(b for b in again.button if b.label == "Preview").click().run(timeout=T)
    assert again.session_state["pp_job"][2] == job and len(started) == 1
    finish_preview(again)
    assert "Effect of each step" in [h.value for h in again.subheader]
    time.sleep(0.5)  # reaped by its thread once it ended: no zombie left in the server
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split()[2] != "Z"
    # stopped while running: nothing of it is left
    at = page("preprocess")
    next(c for c in at.checkbox if c.label == "Filter genes").uncheck().run(timeout=T)
    next(b for b in at.button if b.label == "Preview").click().run(timeout=T)
    job = Path(at.session_state["pp_job"][2])
    # a refresh keeps the form (a browser pass: it went back to the suggested steps), so the
    # running preview of these steps is taken up
    refreshed = page("preprocess")
    assert not next(c for c in refreshed.checkbox if c.label == "Filter genes").value
    assert refreshed.session_state["pp_job"][2] == str(job)
    # a form of other steps (another tab's last settings): told of the preview it cannot show
    (workspace.home() / "forms.json").unlink()
    other = page("preprocess")
    told = [c.value for c in other.caption if "started earlier" in c.value]
    assert told and "tick the same steps to see it" in told[0], [c.value for c in other.caption]
    next(b for b in at.button if b.label == "Stop the preview").click().run(timeout=T)
    assert "pp_job" not in at.session_state and not job.exists()
    assert not Path(str(job)[: -len(".job")]).exists()


def test_a_background_preview_is_shown_in_the_sidebar_of_every_page(counts_adata):
    """A browser pass: a Preview of Leiden (minutes) left running on Preprocess was seen on no
    other page. The sidebar names the dataset, the step and how long it has run."""
    import json
    import subprocess
    import sys
    import time

    from engine import pp_child
    from ui import sidebar

    key = datasets.save(counts_adata, "kang")
    target = datasets.new_incoming()
    job = Path(f"{target}.job")
    job.mkdir()
    steps = [{"name": n, "params": {}} for n in ("normalize", "hvg", "leiden")]
    # a live process whose command line names the job's output, as pp_child's child does
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(target)])
    cmdline = Path(f"/proc/{child.pid}/cmdline")
    for _ in range(100):  # until it has exec'd (before, its command line is pytest's)
        if str(target) in cmdline.read_bytes().decode(errors="replace"):
            break
        time.sleep(0.05)
    try:
        (job / "job.json").write_text(
            json.dumps(
                {
                    "pid": child.pid,
                    "started": time.time() - 75,
                    "limit_s": 600,
                    "source": str(datasets.path(key).resolve()),
                    "recipe": json.dumps({"steps": steps}),
                }
            )
        )
        (job / "steps.jsonl").write_text(
            "".join(json.dumps({"step": n, "seconds": 1.0}) + "\n" for n in ("normalize", "hvg"))
        )
        (found,) = pp_child.running(job.parent)
        assert found["steps"] == ["normalize", "hvg", "leiden"] and found["done"] == 2
        assert sidebar.preview_text(found).startswith("Preview of kang · leiden (3 of 3) · 1m 1")
        at = page("runs")
        said = [c.value.replace("\\", "") for c in at.sidebar.caption]
        assert any("Preview of kang · leiden (3 of 3)" in c for c in said), said
        assert "**Previews in progress**" in [m.value for m in at.sidebar.markdown]
    finally:
        child.kill()
        child.wait()
    at = page("runs")  # ended: no longer listed
    assert "**Previews in progress**" not in [m.value for m in at.sidebar.markdown]
    assert not any("Preview of" in c.value for c in at.sidebar.caption)


def test_two_tabs_following_one_preview_never_delete_each_others_result(counts_adata, monkeypatch):
    """A review: two tabs on Preprocess with the same steps follow one background job; the
    first to see it done took its result, and the second then read it as failed and deleted
    the result file the first was showing. Both now show it; once one saves it, the other
    says so (no error) and the saved dataset is whole."""
    at, _ = _preview_in_a_child(counts_adata, monkeypatch)
    other = page("preprocess")  # another tab, the same form (kept on disk): the same job
    assert other.session_state["pp_job"][2] == at.session_state["pp_job"][2]
    finish_preview(at)
    result = Path(at.session_state["pp_result"][2])
    assert result.exists() and "Effect of each step" in [h.value for h in at.subheader]
    finish_preview(other)
    assert other.session_state["pp_result"][2] == str(result)
    assert "Effect of each step" in [h.value for h in other.subheader]
    next(b for b in at.button if b.label == "Save").click().run(timeout=T)
    assert not at.exception and not at.error
    assert "raw_pp" in [d["name"] for d in datasets.list_datasets()]
    other.run(timeout=T)
    assert not other.exception and not other.error
    assert "Effect of each step" not in [h.value for h in other.subheader]
    assert any("saved, or replaced, in another tab" in i.value for i in other.info)


def test_a_finished_preview_is_shown_again_after_a_refresh(counts_adata, monkeypatch):
    """A browser pass: a refresh after Preview had finished showed "Press Preview", and the
    same steps were computed again (a Leiden of 72 s). A finished preview is kept, in the
    page's process or in a child, until it is saved or replaced; Preview finds it too."""
    from engine import pp_child

    made = []
    real = pp_child.make
    monkeypatch.setattr(pp_child, "make", lambda *a, **k: made.append(1) or real(*a, **k))
    datasets.save(counts_adata, "raw")
    at = page("preprocess")  # a small recipe: applied in the page's process
    next(b for b in at.button if b.label == "Preview").click().run(timeout=T)
    assert "Effect of each step" in [h.value for h in at.subheader] and made == [1]
    again = page("preprocess")  # a refresh: a new session, the form kept on disk
    finish_preview(again)
    assert "Effect of each step" in [h.value for h in again.subheader], [
        c.value for c in again.caption
    ]
    next(b for b in again.button if b.label == "Preview").click().run(timeout=T)
    finish_preview(again)
    assert "Effect of each step" in [h.value for h in again.subheader] and made == [1]
    # other steps previewed in the same tab: the earlier result is replaced, not kept twice
    incoming = datasets.path("x").parent / datasets.INCOMING
    next(c for c in again.checkbox if c.label == "Filter genes").uncheck().run(timeout=T)
    next(b for b in again.button if b.label == "Preview").click().run(timeout=T)
    assert len(list(incoming.glob("*.job"))) == 1 and len(list(incoming.glob("*.h5ad"))) == 1
    next(b for b in again.button if b.label == "Save").click().run(timeout=T)
    assert not again.exception and not again.error
    assert not list(incoming.glob("*.job")) and not list(incoming.glob("*.h5ad"))
