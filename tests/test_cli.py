"""The command line: real subprocesses, exit codes, one line on stderr for bad input."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def cli(*args, check=True):
    p = subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    if check and p.returncode != 0:
        raise AssertionError(p.stderr)
    return p


def test_help_documents_every_option():
    out = cli("preprocess", "--help").stdout
    for opt in (
        "--recipe",
        "--min-genes",
        "--max-pct-mito",
        "--min-cells",
        "--normalize",
        "--hvg",
        "--scale",
        "--arcsinh",
        "--keep-counts",
        "--subset",
    ):
        assert opt in out
    train_help = cli("train", "--help").stdout
    for opt in (
        "--label-key",
        "--layer",
        "--epochs",
        "--batch-size",
        "--lr",
        "--seed",
        "--device",
        "--train-on",
        "--param",
        "--condition-key",
        "--ctrl",
        "--stim",
        "--cell-type-key",
        "--predict",
    ):
        assert opt in train_help


def test_info_demo_preprocess_train_predict(tmp_path):
    demo = tmp_path / "syn.h5ad"
    cli("demo", "synthetic_perturbation", "-o", demo)
    info = json.loads(cli("info", demo, "--json").stdout)
    assert info["x_kind"] == "counts" and info["n_obs"] == 2000
    assert "counts" in cli("info", demo).stdout
    pre = tmp_path / "pre.h5ad"
    out = cli(
        "preprocess",
        demo,
        "-o",
        pre,
        "--min-genes",
        10,
        "--keep-counts",
        "--normalize",
        "logcpm",
        "--hvg",
        200,
        "--scale",
        "zscore",
        "--save-recipe",
        tmp_path / "r.json",
    ).stdout
    assert "hvg" in out and "200 genes" in out
    recipe = json.loads((tmp_path / "r.json").read_text())
    assert [s["name"] for s in recipe["steps"]] == [
        "filter_cells",
        "keep_counts",
        "normalize",
        "hvg",
        "scale",
    ]
    pre2 = tmp_path / "pre2.h5ad"
    cli("preprocess", demo, "-o", pre2, "--recipe", tmp_path / "r.json")
    assert json.loads(cli("info", pre2, "--json").stdout)["n_vars"] == 200
    metrics = json.loads(
        cli(
            "train",
            "--data",
            pre,
            "--model",
            "mlp",
            "--label-key",
            "cell_type",
            "--epochs",
            3,
            "--out",
            tmp_path / "run",
            "--param",
            "hidden=32",
        ).stdout
    )
    assert metrics["test_accuracy"] > 0.9
    cli("predict", "--run", tmp_path / "run", "--data", pre, "-o", tmp_path / "pred.h5ad")
    assert (tmp_path / "pred.h5ad").exists()


def test_submit_runs_wait(tmp_path, lognorm_file):
    run_dir = cli(
        "submit",
        "--data",
        lognorm_file,
        "--model",
        "logreg",
        "--label-key",
        "cell_type",
        "--epochs",
        2,
    ).stdout.strip()
    assert cli("wait", run_dir).stdout.strip() == "completed"
    rows = json.loads(cli("runs", "--json").stdout)
    assert rows[0]["path"] == run_dir and rows[0]["state"] == "completed"
    # the Runs page's words, under a header (it printed 'epoch 3.31/100', no header)
    from engine.progress import progress

    header, line = cli("runs").stdout.strip().splitlines()
    assert header.split() == ["run", "state", "model", "dataset", "progress"]
    assert line.endswith(progress(rows[0])[1]) and "." not in progress(rows[0])[1]
    assert progress({"state": "completed", "model": "sk_logreg"})[1] == "fitted in one step"
    assert progress({"state": "running", "model": "mlp", "epoch": 3.31, "max_epochs": 100}) == (
        0.0331,
        "epoch 3 of 100",
    )


def test_submit_takes_a_workspace_dataset_key(lognorm_adata, workspace):
    """The key the Data page shows (and ``datasets list`` prints) works as ``--data``; the run
    records it as the app's runs do (key, label, fingerprint)."""
    from engine import datasets

    key = datasets.save(lognorm_adata, "my pbmc")
    run_dir = cli(
        "submit", "--data", key, "--model", "logreg", "--label-key", "cell_type", "--epochs", 2
    ).stdout.strip()
    assert cli("wait", run_dir).stdout.strip() == "completed"
    spec = json.loads((Path(run_dir) / "run.json").read_text())
    assert spec["data"] == str(datasets.path(key)) and spec["dataset_key"] == key
    assert spec["dataset_name"] == "my pbmc"
    assert spec["data_fingerprint"] == datasets.fingerprint(key)
    assert spec["epochs_set_by"] == "user"  # --epochs: Results says the cap was chosen


TRAIN_MLP = ["train", "--data", "{lognorm}", "--model", "mlp"]
SCGEN_DESIGN = ["--condition-key", "condition", "--ctrl", "control", "--cell-type-key", "cell_type"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "missing.h5ad"], "does not exist"),
        (["train", "--data", "{lognorm}", "--model", "nope", "--out", "x"], "Unknown model"),
        (TRAIN_MLP + ["--out", "x"], "label column"),
        (TRAIN_MLP + ["--label-key", "cell_type", "--epochs", "-3", "--out", "x"], "epochs"),
        (TRAIN_MLP + ["--label-key", "cell_type", "--lr", "0", "--out", "x"], "learning rate"),
        (TRAIN_MLP + ["--label-key", "nope", "--out", "{tmp}/r"], "no column 'nope'"),
        (
            ["train", "--data", "{lognorm}", "--model", "scgen", *SCGEN_DESIGN]
            + ["--stim", "infected", "--predict", "B cell", "--out", "{tmp}/r"],
            "no stimulated value",
        ),
        (
            ["preprocess", "{lognorm}", "-o", "{tmp}/o.h5ad", "--recipe", "{tmp}/bad.json"],
            "Unknown recipe step",
        ),
        (["cancel", "no-such-run"], "No run"),
        (["submit", "--data", "{tmp}/gone.h5ad", "--model", "vae"], "does not exist"),
        # refused by a worker seconds after 'submit' had printed its folder and exited 0
        (
            ["submit", "--data", "{lognorm}", "--model", "scgen", *SCGEN_DESIGN, "--stim"]
            + ["stimulated", "--predict", "B cell", "--layer", "counts"],
            "holds raw counts: run logCPM (Preprocess > normalize) first. Or train on X",
        ),
        (["submit", "--data", "{lognorm}", "--model", "mlp", "--label-key", "x"], "no column 'x'"),
        # numbers given that were dropped silently (0, 150, nan) or overflowed (rc 1)
        (["preprocess", "{lognorm}", "-o", "{tmp}/o.h5ad", "--hvg", "0"], "n_top must be at"),
        (["preprocess", "{lognorm}", "-o", "{tmp}/o.h5ad", "--arcsinh", "0"], "cofactor must"),
        (["preprocess", "{lognorm}", "-o", "{tmp}/o.h5ad", "--max-pct-mito", "150"], "at most 100"),
        (["preprocess", "{lognorm}", "-o", "{tmp}/o.h5ad", "--max-pct-mito", "nan"], "finite"),
        (["preprocess", "{lognorm}", "-o", "{tmp}/o.h5ad", "--hvg", "1" + "0" * 400], "too large"),
        (
            ["preprocess", "{lognorm}", "-o", "{tmp}/o.h5ad", "--recipe", "{tmp}/huge.json"],
            "not valid JSON",
        ),
        # --recipe /dev/zero grew until memory ran out; a pipe blocked forever
        (["preprocess", "{lognorm}", "-o", "{tmp}/o.h5ad", "--recipe", "/dev/zero"], "not a file"),
        (["preprocess", "{lognorm}", "-o", "{tmp}/o.h5ad", "--recipe", "{tmp}/fifo"], "not a file"),
        (
            ["preprocess", "{lognorm}", "-o", "{tmp}/o.h5ad", "--recipe", "{tmp}/no.json"],
            "not exist",
        ),
        (
            ["preprocess", "{lognorm}", "-o", "{tmp}/o.h5ad", "--recipe", "{tmp}/big.json"],
            "is over 1 MB",
        ),
        # predict -o over its own --data replaced the user's input
        (["predict", "--run", "{tmp}", "--data", "{lognorm}", "-o", "{lognorm}"], "is the input"),
    ],
)
def test_bad_input_one_line_nonzero(tmp_path, lognorm_file, workspace, args, message):
    (tmp_path / "bad.json").write_text('{"steps": [{"name": "teleport"}]}')
    digits = "1" + "0" * 5000  # beyond Python's 4,300-digit conversion limit
    (tmp_path / "huge.json").write_text(
        json.dumps({"steps": [{"name": "hvg", "params": {"n_top": 1}}]}).replace("1", digits)
    )
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big.json").write_text(" " * (2 << 20) + "{}")
    args = [a.format(lognorm=lognorm_file, tmp=tmp_path) for a in args]
    p = cli(*args, check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())


def test_train_on_values_may_hold_commas_and_seeds_make_a_group(monkeypatch, lognorm_file):
    from engine import cli, jobs

    args = cli.parser().parse_args(
        ["train", "--model", "autoencoder", "--data", lognorm_file, "--out", "x",
         "--train-on", "cell_type=CD4,CD8", "--train-on", "cell_type=B cell",
         "--param", "widths=8,4"]
    )  # fmt: skip
    spec = cli._spec(args, "x")
    assert spec.train_on == {"cell_type": ["CD4,CD8", "B cell"]}
    assert spec.params["widths"] == "8,4"

    submitted = []
    monkeypatch.setattr(jobs, "submit", lambda s: submitted.append(s) or f"run-{s.seed}")
    code = cli.main(
        ["submit", "--model", "mlp", "--data", lognorm_file, "--label-key", "cell_type",
         "--seeds", "0,1,2"]
    )  # fmt: skip
    assert code == 0 and [s.seed for s in submitted] == [0, 1, 2]
    assert len({s.group for s in submitted}) == 1 and submitted[0].group


def test_train_on_a_label_with_a_comma_selects_exactly_those_cells(tmp_path, lognorm_adata):
    import numpy as np

    from engine import io, train
    from engine.spec import RunSpec

    a = lognorm_adata.copy()
    a.obs["cell_type"] = a.obs["cell_type"].astype(str).replace({"T cell": "CD4,CD8"})
    path = io.write_h5ad(a, tmp_path / "comma.h5ad")
    spec = RunSpec(
        model="pca", data=str(path), out=str(tmp_path / "r"), train_on={"cell_type": ["CD4,CD8"]}
    )
    train.run(spec)
    split = np.load(tmp_path / "r" / "split.npz")
    assert set(a.obs["cell_type"].iloc[split["train"]]) == {"CD4,CD8"}


def test_models_names_one_models_parameters_and_their_choices():
    from engine import models

    text = cli("models", "scgen").stdout
    for key, p in models.get("scgen").params.items():
        assert f"--param {key}={p.default}" in text
    assert "[paired | sampled]" in text and "[0 to 0.9]" in text  # choices, ranges
    info = json.loads(cli("models", "scgen", "--json").stdout)
    assert list(info) == ["scgen"]
    assert info["scgen"]["param_info"]["delta"]["choices"] == ["paired", "sampled"]
    bad = cli("models", "nope", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: Unknown model 'nope'")
    assert "Traceback" not in bad.stderr


def test_outputs_never_replace_a_run_or_a_workspace_dataset(tmp_path, lognorm_file, workspace):
    """`train --out` over an existing run rewrote its weights, metrics and record (the listing
    then showed another model under its id); `predict -o RUN/model.pt` replaced the weights
    with an HDF5 file; `preprocess -o` into the workspace's datasets replaced a dataset behind
    its description. Each is refused in one line and nothing changes."""
    from engine import datasets, io

    run = tmp_path / "run"
    cli("train", "--model", "sk_logreg", "--label-key", "cell_type", "--data", lognorm_file,
        "--out", run)  # fmt: skip
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    cases = [
        (["train", "--model", "mlp", "--label-key", "cell_type", "--data", lognorm_file,
          "--epochs", 1, "--out", run], "holds a run"),
        (["predict", "--run", run, "--data", lognorm_file, "-o", run / "model.pt"],
         "outside the run folder"),
        (["predict", "--run", run, "--data", lognorm_file, "-o", run / "sub" / "x.h5ad"],
         "outside the run folder"),
    ]  # fmt: skip
    key = datasets.save(io.read(lognorm_file), "mine", source="test")
    kept = datasets.path(key).read_bytes()
    cases.append(
        (["preprocess", lognorm_file, "-o", datasets.path(key), "--hvg", 5], "workspace dataset")
    )
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    cases.append(
        (["train", "--model", "sk_logreg", "--label-key", "cell_type", "--data", lognorm_file,
          "--out", other], "not an empty folder")
    )  # fmt: skip
    # the workspace's (empty) runs folder, and a folder inside a run: a later delete of the
    # outer folder took every run in it (a hostile-input pass)
    from engine import workspace as ws

    for out, message in (
        (ws.runs_dir(), "holds the workspace's runs"),
        (run / "nested", "inside the run folder"),
    ):
        cases.append(
            (["train", "--model", "sk_logreg", "--label-key", "cell_type", "--data",
              lognorm_file, "--out", out], message)
        )  # fmt: skip
    # preprocess --save-recipe wrote wherever it was pointed (the input, a run's record, a
    # dataset, its own -o), exit 0; -o the input replaced it
    source = Path(lognorm_file).read_bytes()
    pp = ["preprocess", lognorm_file, "-o", tmp_path / "pp.h5ad", "--hvg", 5, "--save-recipe"]
    cases += [
        ([*pp, lognorm_file], "is the input"),
        ([*pp, tmp_path / "pp.h5ad"], "is -o"),
        ([*pp, run / "run.json"], "outside the run folder"),
        ([*pp, datasets.path(key)], "workspace dataset"),
        (["preprocess", lognorm_file, "-o", lognorm_file, "--hvg", 5], "is the input"),
    ]
    # a pipe (or a device: `-o /dev/null` run as root) was replaced by a regular file, exit 0
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases += [
        (["preprocess", lognorm_file, "-o", fifo, "--hvg", 5], "not a regular file"),
        ([*pp, fifo], "not a regular file"),
        (["demo", "synthetic_perturbation", "-o", fifo], "not a regular file"),
    ]
    # another workspace's saved dataset (its own SCWB_HOME) was replaced, exit 0, and refused
    # there as changed; a folder no file can be made in ended in HDF5's 'unexpected
    # FileNotFoundError' (a hostile pass)
    other_ws = tmp_path / "other-ws"
    (other_ws / "runs").mkdir(parents=True)
    (other_ws / "datasets").mkdir()
    theirs = other_ws / "datasets" / "pbmc-0123abcd.h5ad"
    theirs.write_bytes(b"their data")
    (other_ws / "datasets" / "pbmc-0123abcd.json").write_text('{"fingerprint": "ab"}')
    cases += [
        (["preprocess", lognorm_file, "-o", theirs, "--hvg", 5], "datasets folder of a workspace"),
        (["preprocess", lognorm_file, "-o", "/proc/x.h5ad", "--hvg", 5], "no file can be written"),
    ]
    for argv, message in cases:
        p = cli(*argv, check=False)
        assert p.returncode == 2, (argv, p.stderr)
        assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert theirs.read_bytes() == b"their data"
    # a project's own folders that happen to be named datasets and runs are not a workspace
    mine = tmp_path / "project" / "datasets"
    mine.mkdir(parents=True)
    (mine.parent / "runs").mkdir()
    cli("preprocess", lognorm_file, "-o", mine / "pp.h5ad", "--hvg", 5)
    assert (mine / "pp.h5ad").exists()
    assert Path(lognorm_file).read_bytes() == source and not (tmp_path / "pp.h5ad").exists()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert datasets.path(key).read_bytes() == kept
    assert (other / "keep.txt").read_text() == "mine" and len(list(other.iterdir())) == 1
    assert not list(ws.runs_dir().iterdir()) and not (run / "nested").exists()
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_delete_never_takes_other_runs_with_it(tmp_path, lognorm_file, workspace):
    """A run folder that holds another run (made by hand, or before --out refused it) and the
    runs folder itself are not deleted as one run."""
    from engine import runs
    from engine import workspace as ws

    outer = tmp_path / "outer"
    cli("train", "--model", "sk_logreg", "--label-key", "cell_type", "--data", lognorm_file,
        "--out", outer)  # fmt: skip
    inner = outer / "inner"
    inner.mkdir()
    runs.write_json(inner / "run.json", {"model": "sk_logreg"})
    runs.write_json(inner / "status.json", {"state": "completed"})
    p = cli("delete", outer, check=False)
    assert p.returncode == 2 and "holds another run" in p.stderr, p.stderr
    assert (inner / "run.json").exists()
    root = ws.runs_dir()
    runs.write_json(root / "run.json", {"model": "sk_logreg"})  # the runs folder posing as one
    runs.write_json(root / "status.json", {"state": "completed"})
    p = cli("delete", root, check=False)
    assert p.returncode == 2 and "holds the workspace's runs" in p.stderr, p.stderr
    assert root.is_dir()


def test_preprocess_notes_go_to_the_report_and_stderr_stays_empty(tmp_path, counts_adata):
    """scanpy's "Some cells have zero counts" (with the wrapper's source line) reached stderr
    after a gene filter; the step's note is printed on its report line instead."""
    import numpy as np
    import scipy.sparse as sp

    from engine.io import write_h5ad

    a = counts_adata.copy()
    x = a.X.toarray()
    x[:, 0] = 0
    x[:2] = 0
    x[:2, 0] = 5
    a.X = sp.csr_matrix(x.astype(np.float32))
    src = write_h5ad(a, tmp_path / "empty_cells.h5ad")
    p = cli(
        "preprocess",
        src,
        "-o",
        tmp_path / "o.h5ad",
        "--min-cells",
        3,
        "--normalize",
        "logcpm",
        "--hvg",
        5000,
    )
    assert p.stderr == ""
    lines = {line.split()[0]: line for line in p.stdout.splitlines() if line}
    assert "(2 cells have no counts in the genes kept" in lines["normalize"]
    assert "(5,000 genes asked for and" in lines["hvg"]


def test_files_whose_names_start_with_a_dash_are_read(tmp_path, lognorm_adata, workspace):
    """The reader and preprocessing children took a file named "-sample1.h5ad" for an option
    ("argument --display: expected one argument"): names now travel after "--"."""
    from engine.io import write_h5ad

    src = write_h5ad(lognorm_adata, tmp_path / "-sample1.h5ad")
    p = cli("info", src)
    assert p.returncode == 0 and f"{lognorm_adata.n_obs} cells" in p.stdout, p.stderr
    out = tmp_path / "-out.h5ad"
    p = cli("preprocess", src, "-o", out, "--hvg", 10)
    assert p.returncode == 0 and out.exists(), p.stderr


def test_two_commands_never_share_a_new_run_folder(tmp_path):
    """Two `train --out` naming one new folder at once both passed the emptiness check and
    left a run whose record named one model and whose weights were the other's: the folder is
    claimed atomically, and the second command gets one line."""
    from engine import workspace
    from engine.errors import ScwbError

    out = tmp_path / "race"
    workspace.claim_run_folder(out)
    with pytest.raises(ScwbError, match="being written by another command"):
        workspace.claim_run_folder(out)
    assert [p.name for p in out.iterdir()] == [workspace.CLAIM]


def test_a_failed_foreground_train_records_why(tmp_path, lognorm_file, monkeypatch, capsys):
    """`train` (not submit) that fails after starting left status 'running', and listings
    later called it interrupted 'by an app or machine restart'."""
    from engine import results, runs
    from engine.cli import main

    def boom(*_, **__):
        raise RuntimeError("boom in annotate")

    monkeypatch.setattr(results, "annotate", boom)
    out = tmp_path / "r"
    argv = ["train", "--model", "sk_logreg", "--label-key", "cell_type", "--data", lognorm_file]
    assert main([*argv, "--out", str(out)]) == 1
    status = runs.read_status(out)
    assert status["state"] == "failed" and status["error"] == "RuntimeError: boom in annotate"
    assert "unexpected RuntimeError: boom in annotate" in capsys.readouterr().err


def test_a_workspace_that_is_no_folder_is_one_line(tmp_path):
    """SCWB_HOME naming a file, a path under a file or a link loop gave 'unexpected
    FileExistsError' / 'NotADirectoryError' for runs, datasets list and submit."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for home, words in ((afile, "is not a folder"), (afile / "sub", "cannot be the workspace"),
                        (loop, "looping link")):  # fmt: skip
        p = subprocess.run(
            [sys.executable, "-m", "engine", "runs"],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
            env={**__import__("os").environ, "SCWB_HOME": str(home)},
        )  # fmt: skip
        assert p.returncode == 2 and words in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1


def test_a_train_refused_before_it_starts_leaves_its_folder_new(
    tmp_path, lognorm_file, capsys, monkeypatch
):
    """The claim of a run refused at once (a wrong label column) stayed behind, and the
    corrected command was told the folder was not empty."""
    from engine.cli import main

    out = tmp_path / "r"
    argv = ["train", "--model", "sk_logreg", "--data", lognorm_file, "--out", str(out)]
    assert main([*argv, "--label-key", "nope"]) == 2
    assert not out.exists()
    assert main([*argv, "--label-key", "cell_type"]) == 0
    assert (out / "metrics.json").exists()

    # more devices than the machine has: a process per CPU device (--devices 1000 started them)
    capsys.readouterr()
    many = ["--label-key", "cell_type", "--device", "cpu", "--devices", "1000"]
    other = tmp_path / "r2"
    assert main([*argv[:2], "mlp", *argv[3:-1], str(other), *many]) == 2
    err = capsys.readouterr().err
    assert "--devices 1000: this machine has" in err and len(err.strip().splitlines()) == 1
    assert not other.exists()
    # under SLURM the scheduler granted the devices (each task may see one core): not refused
    from engine import device

    calls = []
    monkeypatch.setattr(device, "check_count", lambda *a: calls.append(a))
    assert main([*argv[:-1], str(tmp_path / "r3"), "--label-key", "cell_type"]) == 0
    assert calls  # checked on this machine
    calls.clear()
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert main([*argv[:-1], str(tmp_path / "r4"), "--label-key", "cell_type"]) == 0
    assert not calls


def test_seeds_past_the_queue_limit_queue_none(tmp_path, lognorm_file, workspace, monkeypatch):
    """SCWB_MAX_QUEUED=3 and 5 seeds queued three, then refused the rest (a half group that a
    second try duplicated): all or none."""
    monkeypatch.setenv("SCWB_MAX_QUEUED", "3")
    p = cli(
        "submit", "--data", lognorm_file, "--model", "sk_logreg", "--label-key", "cell_type",
        "--seeds", "0,1,2,3,4", check=False,
    )  # fmt: skip
    assert p.returncode == 2 and "nothing was submitted" in p.stderr and not p.stdout.strip()
    assert not (workspace / "runs").exists() or not [
        d for d in (workspace / "runs").iterdir() if not d.name.startswith(".")
    ]


def test_predict_takes_a_run_id_like_export_and_cancel(tmp_path, lognorm_file, workspace):
    """predict said '<id> holds no saved model ... did the run finish?' for a run id that
    export, cancel and delete all took."""
    run = workspace / "runs" / "my-run"
    cli("train", "--data", lognorm_file, "--model", "sk_logreg", "--label-key", "cell_type",
        "--out", run)  # fmt: skip
    out = tmp_path / "pred.h5ad"
    p = cli("predict", "--run", "my-run", "--data", lognorm_file, "-o", out)
    assert p.stdout.strip() == str(out) and out.exists()


def test_names_from_the_data_reach_the_terminal_as_text(tmp_path, capsys, workspace):
    """A hostile-input pass: label values and column names with terminal escapes (colour,
    screen clear, OSC 52 clipboard write) were printed raw by `info` and in error lines."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from engine import cli

    esc = "\x1b"
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {f"cell{esc}[31mtype": pd.Categorical(rng.choice([f"B{esc}]52;c;eA==\a", "NK\r"], 40))},
        index=[f"c{i}" for i in range(40)],
    )
    path = tmp_path / "ansi.h5ad"
    ad.AnnData(rng.poisson(2, (40, 10)).astype(np.float32), obs=obs).write_h5ad(path)
    assert cli.main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert esc not in out and "\r" not in out and "\a" not in out
    assert "cell\\x1b[31mtype" in out and "NK\\r" in out
    args = ["train", "--model", "logreg", "--data", str(path), "--label-key", "nope"]
    assert cli.main([*args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert esc not in err and "cell\\x1b[31mtype" in err


def test_a_pipe_closed_early_is_not_an_error(monkeypatch, capsys):
    """`python -m engine models --json | head -c 10` ended with 'unexpected BrokenPipeError'."""
    from engine import cli

    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "run_command", closed)
    monkeypatch.setattr(cli.os, "dup2", lambda *a: None)  # the test's own stdout stays
    assert cli.main(["models"]) == 141
    assert capsys.readouterr().err == ""


def test_a_terminated_export_leaves_no_partial_file(tmp_path, lognorm_file, workspace):
    """A hostile pass: `export --zip` killed by a timeout (SIGTERM) left a 17 GB .partial
    beside its target. SIGTERM unwinds like Ctrl-C: the half-written file is removed."""
    import signal
    import time

    run = workspace / "runs" / "big-run"
    cli("train", "--data", lognorm_file, "--model", "pca", "--out", run)
    (run / "notes.bin").write_bytes(os.urandom(96 * 2**20))  # slow to deflate: seconds
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    p = subprocess.Popen(
        [sys.executable, "-m", "engine", "export", "big-run", "--zip", str(out_dir / "r.zip")],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.time()
    while not any(out_dir.iterdir()) and time.time() - t0 < 120 and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "the export ended before it could be stopped"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 130
    assert p.stderr.read().strip() == "error: interrupted"
    assert not list(out_dir.iterdir())  # neither the zip nor its .partial


def test_a_terminated_train_is_recorded_as_stopped(tmp_path, lognorm_file, workspace):
    """A review: SIGTERM during `train` reached Lightning as an interrupt, which exits with
    sys.exit(1); the run was recorded as failed with 'SystemExit: 1'. It is a stop: cancelled,
    said why, exit 130."""
    import signal
    import time

    from engine import runs

    run = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "-m", "engine", "train", "--data", lognorm_file, "--model", "mlp",
         "--label-key", "cell_type", "--epochs", "5000", "--patience", "5000", "--out", str(run)],
        cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    t0 = time.time()
    while time.time() - t0 < 180 and p.poll() is None:
        st = runs.read_json(run / "status.json", {}) or {}
        if st.get("state") == "running" and (st.get("epoch") or 0) >= 1:
            break
        time.sleep(0.2)
    assert p.poll() is None, p.stderr.read()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 130
    assert p.stderr.read().strip().splitlines()[-1] == "error: interrupted"
    st = runs.read_status(run)
    assert st["state"] == "cancelled" and st["error"] == "terminated (SIGTERM)", st


def test_no_output_lands_on_the_workspaces_own_files(lognorm_file, capsys):
    """A hostile pass: `export --metrics-csv` over a slot's lock file let a queued run start
    beside the running one on one slot; forms.json, state.json and the queue's records could be
    replaced the same way, and `train --out` made runs inside the queue's folder. Inside the
    workspace, only a new run folder directly in its runs is written; the rest is refused in
    one line and left as it was."""
    from engine import cli as engine_cli
    from engine import workspace as ws

    run = ws.runs_dir() / "r1"  # a new run folder directly in runs: allowed
    train = ["train", "--model", "sk_logreg", "--label-key", "cell_type", "--data", lognorm_file]
    assert engine_cli.main([*train, "--out", str(run)]) == 0
    lock = ws.home() / "slots" / "vm" / "slot-0.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    forms = ws.home() / "forms.json"
    forms.write_text("{}")
    capsys.readouterr()
    cases = [
        ["export", "r1", "--metrics-csv", str(lock)],
        ["export", str(run), "--zip", str(forms)],
        ["predict", "--run", str(run), "--data", lognorm_file, "-o", str(ws.home() / "x.h5ad")],
        [*train, "--out", str(ws.runs_dir() / ".queue" / "vm" / "new")],
        [*train, "--out", str(ws.home() / "embeddings" / "new")],
    ]
    for args in cases:
        assert engine_cli.main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert "is inside the workspace" in err and len(err.splitlines()) == 1, err
    assert lock.read_text() == "" and forms.read_text() == "{}"
    assert not (ws.home() / "x.h5ad").exists() and not (ws.home() / "embeddings").exists()
    assert not (ws.runs_dir() / ".queue" / "vm" / "new").exists()


def test_a_path_the_system_refuses_is_one_line_exit_2(tmp_path, lognorm_file, capsys):
    """A hostile pass: `train --out FILE/sub`, `predict -o FILE/sub.h5ad` ended in "unexpected
    NotADirectoryError / FileExistsError", exit 1. The path and the system's reason, exit 2."""
    from engine import cli as engine_cli

    afile = tmp_path / "afile"
    afile.write_text("mine")
    train = ["train", "--model", "sk_logreg", "--label-key", "cell_type", "--data", lognorm_file]
    assert engine_cli.main([*train, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    for args in (
        [*train, "--out", str(afile / "sub")],
        ["predict", "--run", str(tmp_path / "run"), "--data", lognorm_file, "-o",
         str(afile / "sub.h5ad")],
    ):  # fmt: skip
        assert engine_cli.main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {afile}") and "name another path." in err, err
        assert len(err.splitlines()) == 1 and "unexpected" not in err
    assert afile.read_text() == "mine"
