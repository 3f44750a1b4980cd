"""What a user takes home: the script reruns the run and reproduces its metrics; the bundle and
the annotated .h5ad hold what they should."""

import io as pyio
import json
import os
import subprocess
import sys
import zipfile

import anndata as ad
import pytest

from engine import export, train
from engine.spec import RunSpec
from tests.conftest import ROOT


@pytest.mark.parametrize(
    "model, kw",
    [
        ("mlp", {"label_key": "cell_type", "epochs": 4}),
        ("autoencoder", {"epochs": 3, "params": {"widths": "16,4"}}),
    ],
)
def test_script_reproduces_metrics(tmp_path, lognorm_file, model, kw):
    run_dir = tmp_path / "run"
    metrics = train.run(RunSpec(model=model, data=lognorm_file, out=str(run_dir), **kw))
    script = tmp_path / "reproduce.py"
    script.write_text(export.script(run_dir))
    out = subprocess.run(
        [sys.executable, str(script), lognorm_file, str(tmp_path / "again")],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # any folder: the script finds the engine by itself
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr  # a browser pass: Lightning's srun notes
    if model == "mlp":  # a browser pass: --help was read as the data's path
        named = tmp_path / "run-id.py"
        named.write_text(export.script(run_dir, filename=named.name))
        helped = subprocess.run(
            [sys.executable, str(named), "--help"], capture_output=True, text=True, timeout=60
        )
        assert helped.returncode == 0 and "python run-id.py --raw RAW.h5ad" in helped.stdout
        bad = subprocess.run(
            [sys.executable, str(named), "-x"], capture_output=True, text=True, timeout=60
        )
        assert bad.returncode == 1 and bad.stderr.startswith("error: unknown option -x")
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    numeric = {k: v for k, v in metrics.items() if isinstance(v, float)}
    assert numeric and all(again[k] == pytest.approx(v, rel=1e-6) for k, v in numeric.items())


def test_bundle_and_annotated_h5ad(tmp_path, lognorm_file):
    run_dir = tmp_path / "run"
    train.run(RunSpec(model="autoencoder", data=lognorm_file, out=str(run_dir), epochs=2))
    with zipfile.ZipFile(pyio.BytesIO(export.bundle(run_dir))) as zf:
        names = set(zf.namelist())
        assert {
            "run.json",
            "status.json",
            "metrics.csv",
            "metrics.json",
            "model.pt",
            "split.npz",
            "results.h5ad",
            "reproduce.py",
        } <= names
        res = ad.read_h5ad(pyio.BytesIO(zf.read("results.h5ad")))
    assert (
        "X_autoencoder" in res.obsm
        and {"reconstruction", "residual"} <= set(res.layers)
        and "abnormality" in res.obs
    )
    assert export.metrics_csv(run_dir).startswith("metric,value\ntest_mse,")


def test_zip_has_regular_files_only(tmp_path, lognorm_file):
    run_dir = tmp_path / "run"
    train.run(RunSpec(model="pca", data=lognorm_file, out=str(run_dir)))
    secret = tmp_path / "secret.txt"
    secret.write_text("do not ship me")
    (run_dir / "passwd").symlink_to(secret)
    (run_dir / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    # the queue's bookkeeping is not the user's (a browser pass found both in the zip)
    (run_dir / "heartbeat").write_text("2026-11-27T08:00:00")
    (run_dir / "cancel").write_text("2026-11-27T08:00:00")
    (run_dir / "worker.log").write_text("")
    (run_dir / "part").mkdir()
    (run_dir / "part" / "cancel").write_text("a user's file of that name, below the top")
    with zipfile.ZipFile(pyio.BytesIO(export.bundle(run_dir))) as zf:
        names = zf.namelist()
        assert "passwd" not in names and not any(n.startswith("linked_dir") for n in names)
        assert not {"heartbeat", "cancel", "worker.log"} & set(names)
        assert {"run.json", "metrics.json", "reproduce.py", "part/cancel"} <= set(names)
    (run_dir / "worker.log").write_text("Traceback: the log of a run that failed\n")
    with zipfile.ZipFile(pyio.BytesIO(export.bundle(run_dir))) as zf:
        assert "worker.log" in zf.namelist()  # a log with something in it is the run's record
        assert all(b"do not ship me" not in zf.read(n) for n in names)


def test_csv_cells_never_become_formulas(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(
        json.dumps({'=HYPERLINK("http://x")': 1.0, "note": "+cmd|' /C calc'!A0", "ok": "-1"})
    )
    rows = export.metrics_csv(run_dir).splitlines()[1:]
    assert all(not r.lstrip('"').startswith(("=", "+", "-", "@")) for r in rows)
    assert any("'=HYPERLINK" in r for r in rows) and any(",'+cmd" in r for r in rows)


def test_the_run_zip_quotes_names_in_the_runs_own_tables(tmp_path, lognorm_adata):
    """loo.csv and gene_means.csv carry the data's cell-type and gene names and went into the
    zip as written: '=HYPERLINK(...)' was a formula in a spreadsheet. In the zip they are
    quoted; numbers stay numbers; the run folder's own files stay as the engine reads them."""
    from engine import io

    run_dir = tmp_path / "run"
    train.run(
        RunSpec(
            model="sk_logreg",
            data=str(io.write_h5ad(lognorm_adata, tmp_path / "d.h5ad")),
            out=str(run_dir),
            label_key="cell_type",
        )
    )
    hostile = 'cell_type,r2\n"=HYPERLINK(""http://x"",""y"")",-0.5\n@SUM(1+1),0.9\n'
    (run_dir / "loo.csv").write_text(hostile)
    with zipfile.ZipFile(pyio.BytesIO(export.bundle(run_dir))) as zf:
        rows = zf.read("loo.csv").decode().splitlines()
    assert rows[1].startswith("\"'=HYPERLINK") and rows[1].endswith(",-0.5")
    assert rows[2] == "'@SUM(1+1),0.9"
    assert (run_dir / "loo.csv").read_text() == hostile


def test_the_run_zip_takes_old_dates_and_long_cells_and_names_what_it_left_out(
    tmp_path, lognorm_file, monkeypatch
):
    """A hostile pass: one file dated before 1980 (a run restored from a backup) or one CSV
    cell over 128 KB failed the whole zip, on the command line with 'unexpected ValueError' and
    in the app with no download and no word. Both are zipped now; a file that cannot be read
    is left out and named in LEFT_OUT.txt, and the rest of the run is there."""
    import csv
    import os

    run_dir = tmp_path / "run"
    train.run(RunSpec(model="pca", data=lognorm_file, out=str(run_dir)))
    os.utime(run_dir / "metrics.json", (0, 0))  # 1970
    long = "x" * 300_000
    (run_dir / "loo.csv").write_text(f"cell_type,r2\n{long},0.5\n=cmd,1\n")
    limit = csv.field_size_limit()
    with zipfile.ZipFile(pyio.BytesIO(export.bundle(run_dir))) as zf:
        assert zf.getinfo("metrics.json").date_time[0] == 1980
        rows = zf.read("loo.csv").decode().splitlines()
        assert rows[1] == f"{long},0.5" and rows[2] == "'=cmd,1"
        assert export.LEFT_OUT not in zf.namelist()
    assert csv.field_size_limit() == limit  # the process's limit is put back
    real = export._safe_csv

    def unreadable(p):
        if p.name == "loo.csv":  # as a file removed or made unreadable while zipping
            raise FileNotFoundError(2, "No such file or directory")
        return real(p)

    monkeypatch.setattr(export, "_safe_csv", unreadable)
    (run_dir / "reproduce.py").write_text("# a file of the zip's own name (a review)")
    out = tmp_path / "run.zip"
    export.write(run_dir, {"zip": out})
    with zipfile.ZipFile(out) as zf:
        assert {"run.json", "metrics.json", "reproduce.py"} <= set(zf.namelist())
        assert "loo.csv" not in zf.namelist()
        said = zf.read(export.LEFT_OUT).decode()
        assert "- loo.csv: FileNotFoundError: " in said, said
        assert "- reproduce.py: the run folder's own file of that name" in said, said
        assert len(zf.namelist()) == len(set(zf.namelist()))  # one entry of each name
        assert b"a file of the zip's own name" not in zf.read("reproduce.py")


HOSTILE = "x'''\"\"\"; import os; os.system('touch PWNED'); '''"


def test_reproduce_script_with_hostile_names_runs_no_injected_code(tmp_path, lognorm_adata):
    from engine import io

    a = lognorm_adata.copy()
    a.obs[HOSTILE] = a.obs["cell_type"]
    data = io.write_h5ad(a, tmp_path / "data.h5ad")
    run_dir = tmp_path / "run's\"dir"
    metrics = train.run(
        RunSpec(model="sk_logreg", data=str(data), out=str(run_dir), label_key=HOSTILE)
    )
    script = tmp_path / "reproduce.py"
    script.write_text(export.script(run_dir))
    compile(script.read_text(), str(script), "exec")  # valid Python whatever the names
    out = subprocess.run(
        [sys.executable, str(script), str(data), str(tmp_path / "again")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "PWNED").exists()
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_reproduce_script_rebuilds_the_input_from_raw_data(tmp_path, counts_adata):
    from engine import io
    from engine import preprocess as pp

    raw = io.write_h5ad(counts_adata, tmp_path / "raw.h5ad")
    recipe = pp.Recipe([pp.Step("normalize", {"target_sum": 1e4}), pp.Step("hvg", {"n_top": 50})])
    pre, _ = pp.apply(counts_adata, recipe)
    data = io.write_h5ad(pre, tmp_path / "pre.h5ad")
    run_dir = tmp_path / "run"
    metrics = train.run(
        RunSpec(model="sk_logreg", data=str(data), out=str(run_dir), label_key="cell_type")
    )
    text = export.script(run_dir)
    assert '"hvg"' in text, "the recipe that made the input travels with the script"
    script = tmp_path / "reproduce.py"
    script.write_text(text)
    rebuilt, again = tmp_path / "rebuilt.h5ad", tmp_path / "again"
    out = subprocess.run(
        [sys.executable, str(script), "--raw", str(raw), str(rebuilt), str(again)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads((again / "metrics.json").read_text())
    assert result["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_cli_export_streams_the_same_files_at_any_size(tmp_path, lognorm_file, capsys):
    """``python -m engine export`` writes what the app's buttons give, file by file (a million-
    cell run's files never pass through memory); bad targets are one error line."""
    from engine import cli

    run_dir = tmp_path / "run"
    train.run(RunSpec(model="autoencoder", data=lognorm_file, out=str(run_dir), epochs=2))
    out = tmp_path / "out"
    out.mkdir()
    argv = ["export", str(run_dir), "--zip", str(out / "r.zip"), "--h5ad", str(out / "r.h5ad")]
    argv += ["--model", str(out / "m.pt"), "--script", str(out / "r.py")]
    assert cli.main([*argv, "--metrics-csv", str(out / "m.csv")]) == 0
    assert len(capsys.readouterr().out.split()) == 5
    assert (out / "r.h5ad").read_bytes() == (run_dir / "results.h5ad").read_bytes()
    assert (out / "m.pt").read_bytes() == (run_dir / "model.pt").read_bytes()
    assert (out / "r.py").read_text() == export.script(run_dir, filename="r.py")
    assert (out / "m.csv").read_text() == export.metrics_csv(run_dir)
    with (
        zipfile.ZipFile(out / "r.zip") as streamed,
        zipfile.ZipFile(pyio.BytesIO(export.bundle(run_dir))) as in_memory,
    ):
        assert sorted(streamed.namelist()) == sorted(in_memory.namelist())
        assert all(streamed.read(n) == in_memory.read(n) for n in in_memory.namelist())
    assert export.bundle_size(run_dir) >= sum(
        i.file_size
        for i in zipfile.ZipFile(out / "r.zip").infolist()
        if i.filename != "reproduce.py"
    )
    assert not list(out.glob(".*partial"))
    # default: RUN.zip in the current folder
    cwd = tmp_path / "here"
    cwd.mkdir()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        assert cli.main(["export", str(run_dir)]) == 0
    finally:
        os.chdir(old)
    assert (cwd / "run.zip").is_file()
    capsys.readouterr()
    (out / "sub").mkdir()
    for bad, says in (
        (["--zip", str(run_dir / "inside.zip")], "outside the run folder"),
        (["--h5ad", str(tmp_path / "no" / "such" / "dir.h5ad")], "failed"),
        (["--zip", "."], "needs a file name"),
        (["--h5ad", ""], "needs a file name"),
        (["--zip", str(out / "sub")], "is a folder"),
        (["--zip", str(out / "x"), "--h5ad", str(out / "x")], "two parts"),
    ):
        assert cli.main(["export", str(run_dir), *bad]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: export:") and says in err and "\n" not in err, (bad, err)
    # a target that is a hard link to a run file gets a new file: the run's file is untouched
    before = (run_dir / "run.json").read_bytes()
    os.link(run_dir / "run.json", out / "hard.py")
    assert cli.main(["export", str(run_dir), "--script", str(out / "hard.py")]) == 0
    assert (run_dir / "run.json").read_bytes() == before
    assert (out / "hard.py").read_text() == export.script(run_dir, filename="hard.py")
    # a source that is a link is not followed (as in the zip); nothing is written when a part fails
    secret = tmp_path / "secret.txt"
    secret.write_text("not the run's")
    (run_dir / "model.pt").unlink()
    (run_dir / "model.pt").symlink_to(secret)
    argv = ["export", str(run_dir), "--zip", str(out / "first.zip"), "--model", str(out / "x.pt")]
    assert cli.main(argv) == 2
    assert "has no model.pt" in capsys.readouterr().err
    assert not (out / "first.zip").exists() and not (out / "x.pt").exists()
    (run_dir / "metrics.json").unlink()
    assert cli.main(["export", str(run_dir), "--metrics-csv", str(out / "m2.csv")]) == 2
    assert "has no metrics.json" in capsys.readouterr().err
    assert cli.main(["export", "no-such-run"]) == 2
    assert not list(out.glob(".*partial"))


def test_reproduce_script_runs_where_the_app_is_not_and_never_reuses_a_folder(
    tmp_path, lognorm_adata
):
    """The script named the app's folder and the workspace's data path: a colleague with the
    zip could not run it. It finds the engine on the path or in $SCWORKBENCH, says which data
    it needs, and a second run goes to a new folder (it wrote into the first one's)."""
    import os

    from engine import io

    data = io.write_h5ad(lognorm_adata, tmp_path / "data.h5ad")
    run_dir = tmp_path / "run"
    train.run(RunSpec(model="sk_logreg", data=str(data), out=str(run_dir), label_key="cell_type"))
    text = export.script(run_dir).replace(repr(str(ROOT)), repr("/nowhere/scworkbench"))
    script = tmp_path / "elsewhere" / "reproduce.py"
    script.parent.mkdir()
    script.write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SCWORKBENCH")}

    def rerun(*args, **extra):
        return subprocess.run(
            [sys.executable, str(script), *map(str, args)],
            capture_output=True, text=True, cwd=script.parent, timeout=300, env={**env, **extra},
        )  # fmt: skip

    lost = rerun()
    assert lost.returncode != 0 and "set SCWORKBENCH" in lost.stderr
    for _ in range(2):
        assert rerun(data, SCWORKBENCH=str(ROOT)).returncode == 0
    made = sorted(p.name for p in script.parent.iterdir() if p.is_dir())
    assert made == ["reproduced-run", "reproduced-run-2"]
    gone = rerun(tmp_path / "missing.h5ad", SCWORKBENCH=str(ROOT))
    assert gone.returncode != 0 and "is not here" in gone.stderr


def test_a_damaged_results_file_or_model_is_not_exported_as_whole(
    tmp_path, lognorm_file, capsys, workspace
):
    """A results.h5ad or model.pt cut short was copied out with exit 0 as if whole: the CLI now
    refuses it in one line (exit 2, nothing written); the whole-run zip still holds every file
    and names the damaged one in LEFT_OUT.txt, with a warning; the Results page withholds it."""
    from engine import cli
    from tests.test_app_results import app

    run_dir = workspace / "runs" / "cut"
    train.run(RunSpec(model="autoencoder", data=lognorm_file, out=str(run_dir), epochs=2))
    for name in ("results.h5ad", "model.pt"):
        whole = (run_dir / name).read_bytes()
        (run_dir / name).write_bytes(whole[: len(whole) // 3])
        out = tmp_path / f"out-{name}"
        part = "--h5ad" if name.endswith("h5ad") else "--model"
        assert cli.main(["export", str(run_dir), part, str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: export: run cut is damaged:") and name in err, err
        assert "\n" not in err and not out.exists()
        assert cli.main(["export", str(run_dir), "--zip", str(tmp_path / "r.zip")]) == 0
        assert "damaged" in capsys.readouterr().err
        with zipfile.ZipFile(tmp_path / "r.zip") as zf:
            assert (
                name in zf.namelist() and f"- {name}: damaged" in zf.read("LEFT_OUT.txt").decode()
            )
        assert export.left_out(tmp_path / "r.zip") == 1
        (run_dir / name).write_bytes(whole)
    assert (
        export.damage(run_dir / "results.h5ad") is None
        and export.damage(run_dir / "model.pt") is None
    )
    # the Results page offers neither as a download
    for name in ("results.h5ad", "model.pt"):
        whole = (run_dir / name).read_bytes()
        (run_dir / name).write_bytes(whole[:100])
        at = app("results", run="cut")
        labels = [b.proto.label for b in at.get("download_button")]
        said = " ".join(c.value for c in at.caption)
        if name == "results.h5ad":
            assert "Annotated .h5ad" not in labels and "The annotated .h5ad is damaged" in said
        else:
            assert "Model weights (.pt)" not in labels and "The model weights are damaged" in said
        assert "Whole run (.zip)" in labels
        (run_dir / name).write_bytes(whole)
