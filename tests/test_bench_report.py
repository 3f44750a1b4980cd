"""The GPU section of docs/BENCHMARKS.md, rendered from the runs kept in bench/results/gpu/:
the figures it prints are the JSON's, and a run with parts missing, failed or from an unknown
card renders instead of crashing the report."""

from __future__ import annotations

import copy
import json

from bench import report


def _runs() -> list[dict]:
    runs = report._gpu_runs()
    assert [r["folder"] for r in runs][:2] == ["h100-a", "h100-b"]
    return runs


def test_gpu_section_prints_the_measured_figures():
    runs = _runs()
    text = "\n".join(report.gpu(runs))
    a, b = (
        json.loads((report.RESULTS / "gpu" / f / "gpu.json").read_text())
        for f in ("h100-a", "h100-b")
    )
    # the VAE and scvi-tools come from the run that measured them (a), scGen and submit from b,
    # whose tests ran after the fix; a's write errors stay listed in the runs table
    engine_1m = next(
        r
        for r in a["vae"]
        if r["n"] == 1_000_000 and r["batch_size"] == 4096 and r["precision"] == "32"
    )
    assert f"{engine_1m['cells_per_s']:.0f}" in text
    ratio = next(r for r in a["engine_vs_scvi"] if r["n"] == 1_000_000 and r["batch_size"] == 4096)
    assert f"1,000,000 cells at batch 4096: {ratio['ratio']:.2f}x" in text
    assert f"{b['scgen']['r2_diff_vs_cpu']:+.4f}" in text
    # each table names its own run and card
    assert "VAE training throughput (run h100-a, NVIDIA H100 80GB HBM3)" in text
    assert "scGen, published defaults (run h100-b, NVIDIA H100 80GB HBM3)" in text
    assert "allow_write_nullable_strings" in text  # run a's errors, in its row
    assert f"{b['pytest_gpu']['passed']} of {b['pytest_gpu']['tests']} passed" in text


def test_gpu_section_survives_missing_failed_and_unknown_parts():
    runs = _runs()
    odd = copy.deepcopy(runs)
    a, b = odd[0], odd[1]
    a["machine"] = {}  # a run without its machine block
    for r in a["vae"] + a["scvi"]:
        r["share_of_peak"] = None  # a card the peak table does not know
    b["pytest_gpu"]["failed"][0]["message"] = ""
    for r in b["submit"]:  # every submit failed
        r.pop("first_live_point_s")
        r["error"] = "no live point in 180 s"
    b["error"] = "no CUDA device"
    text = "\n".join(report.gpu(odd))
    assert "n/a" in text and "no card named" in text
    assert "From `engine submit`" not in text  # no table of nothing
    assert "no live point in 180 s" in text and "no CUDA device" in text
    # every VAE row skipped or failed: no table, no crash
    for r in a["vae"] + a["scvi"]:
        r.pop("cells_per_s", None)
    text = "\n".join(report.gpu(odd))
    assert "VAE training throughput" not in text and "scGen, published defaults" in text


def _scgen_seeds(diffs: dict[str, float]) -> dict:
    """One seed's leave-one-out table: scGen minus mean-shift R² per cell type as given."""
    rows = [
        dict(
            cell_type=ct,
            n_ctrl=50,
            n_stim=40,
            epochs=60,
            r2_mean_all=0.9 + d,
            baseline_noshift_r2_mean_all=0.8,
            baseline_meanshift_r2_mean_all=0.9,
            r2_mean_top100=0.8,
            baseline_meanshift_r2_mean_top100=0.7,
        )
        for ct, d in diffs.items()
    ]
    return {"0": {"seconds": 60, "table": rows}}


def test_scgen_tables_say_which_prediction_they_measured():
    """bench.quality records each set's parameters; a block from before it did ran the
    decoder's output (the default then), and the report says so instead of today's default."""
    seeds = _scgen_seeds({"A": 0.01, "B": -0.02})
    now = "\n".join(
        report._scgen_tables(
            "x", {"params": {"output": "residual", "delta": "paired"}, "seeds": seeds}
        )
    )
    assert "Prediction: each control cell + the decoded change (`output=residual`)" in now
    assert "`paired` stimulation vector" in now and "measured before" not in now
    assert "predictions not cut at 0" in now  # recorded before the cut (no 'decoder' option)
    cut = {"params": {"output": "residual", "delta": "paired", "decoder": "mirrored"}}
    cut_text = "\n".join(report._scgen_tables("x", {**cut, "seeds": seeds}))
    assert "predictions and the mean-shift baseline cut at 0" in cut_text
    assert "above the mean-shift baseline on 1/2 cell types" in now
    weighted = "\n".join(report._scgen_tables("x", {"seeds": seeds}, None, {"A": 0.9}))
    header = next(r for r in weighted.splitlines() if r.startswith("| cell type"))
    assert "cell-weighted meanshift R² all" in header
    assert [r.split("|")[-3].strip() for r in weighted.splitlines() if r.startswith("| A ")] == [
        "0.900"
    ]
    old = "\n".join(report._scgen_tables("x", {"seeds": seeds}))
    assert "the decoder's output (`output=decoded`" in old and "measured before 2026-11-27" in old


def test_scgen_levers_rows_name_their_prediction(monkeypatch):
    """The first row borrows bench.quality's table (its recorded output); a row measured before
    the levers recorded parameters reads as the decoder's output (the default then)."""
    quality = {
        "scgen": {
            "s": {
                "params": {"output": "residual", "delta": "paired"},
                "seeds": _scgen_seeds({"A": 0.03}),
            }
        }
    }
    monkeypatch.setattr(report, "_load", lambda name: quality if name == "quality" else None)
    levers = {
        "s": {
            "kl": {"what": "KL weight 5e-3", "seeds": _scgen_seeds({"A": -0.01})},
            "residual": {
                "what": "residual",
                "params": {"output": "residual"},
                "seeds": _scgen_seeds({"A": 0.03}),
            },
            "new": {
                "what": "a lever recorded",
                "params": {"output": "decoded"},
                "seeds": _scgen_seeds({"A": 0.02}),
            },
        }
    }
    text = "\n".join(report.scgen_levers(levers))
    rows = {
        r.split("|")[1].strip(): r.split("|")[2:-1]
        for r in text.splitlines()
        if r.startswith("| ") and "variant" not in r
    }
    assert [c.strip() for c in rows["the scGen table above (same seeds; delta=paired)"]] == [
        "residual",
        "this CPU",
        "+0.030 ± 0.000 (1/1)",
        "1/1",
        "0.930",
    ]
    assert rows["KL weight 5e-3"][0].strip() == "decoded"
    assert rows["residual"][0].strip() == "residual"
    assert rows["a lever recorded"][0].strip() == "decoded"
    assert list(rows)[0].startswith("the scGen table above")  # the defaults first


def test_scgen_levers_rows_from_another_machine_say_where(monkeypatch):
    """Rows from a GPU machine name it and come after this machine's, their defaults row first."""
    monkeypatch.setattr(report, "_load", lambda name: None)
    card = "NVIDIA H100 80GB HBM3"
    levers = {
        "s": {
            "kl@h100": {
                "what": "KL on the card",
                "device": card,
                "seeds": _scgen_seeds({"A": 0.01}),
            },
            "default@h100": {
                "what": "defaults on the card",
                "device": card,
                "seeds": _scgen_seeds({"A": -0.02}),
            },
            "kl": {"what": "KL here", "seeds": _scgen_seeds({"A": 0.02})},
        }
    }
    text = "\n".join(report.scgen_levers(levers))
    rows = [
        [c.strip() for c in r.split("|")[1:-1]]
        for r in text.splitlines()
        if r.startswith("| ") and "variant" not in r
    ]
    assert [(r[0], r[2], r[3]) for r in rows] == [
        ("KL here", "this CPU", "+0.020 ± 0.000 (1/1)"),
        ("defaults on the card", card, "-0.020 ± 0.000 (0/1)"),
        ("KL on the card", card, "+0.010 ± 0.000 (1/1)"),
    ]


def test_scgen_levers_rows_say_whether_they_were_cut_at_0(monkeypatch):
    """A block recording the decoder (it came with the cut at 0) reads 'cut at 0'; on a machine,
    the cut rows come first, each group led by its defaults row, so a lever is read against
    the defaults scored the same way."""
    monkeypatch.setattr(report, "_load", lambda name: None)
    card = "NVIDIA H100 80GB HBM3"
    uncut = {"output": "residual"}
    cut = {"output": "residual", "decoder": "mirrored"}

    def block(what, params, diff):
        return {"what": what, "device": card, "params": params, "seeds": _scgen_seeds({"A": diff})}

    levers = {
        "s": {
            "default-uncut@h100": block("defaults, uncut", uncut, 0.01),
            "kl@h100": block("KL, uncut", uncut, 0.02),
            "small@h100": block("small, cut", cut, -0.01),
            "default@h100": block("defaults, cut", cut, 0.005),
        }
    }
    text = "\n".join(report.scgen_levers(levers))
    rows = [
        [c.strip() for c in r.split("|")[1:-1]]
        for r in text.splitlines()
        if r.startswith("| ") and "variant" not in r
    ]
    assert [(r[0], r[1]) for r in rows] == [
        ("defaults, cut", "residual, cut at 0"),
        ("small, cut", "residual, cut at 0"),
        ("defaults, uncut", "residual"),
        ("KL, uncut", "residual"),
    ]


def test_scgen_levers_parallel_keeps_whole_seeds_only(tmp_path, monkeypatch):
    """``--jobs`` runs each cell type in its own process: a seed enters the record once every
    cell type of it finished (a deadline leaves the others out), under the machine's tag."""
    import argparse

    from bench import scgen_levers

    monkeypatch.setattr(scgen_levers, "_device_name", lambda: "card")
    run = tmp_path / "run"
    run.mkdir()
    spec = {"params": {"output": "residual"}, "epochs": 300, "batch_size": 32, "lr": 1e-3}
    (run / "run.json").write_text(json.dumps({**spec, "patience": 25, "precision": "32"}))

    def job(seed, ct):
        row = {"cell_type": ct, "r2_mean_all": 0.9, "baseline_meanshift_r2_mean_all": 0.8}
        return {
            "set": "s",
            "var": "e300",
            "seed": seed,
            "cell_type": ct,
            "n_types": 2,
            "run": str(run),
            "row": row,
            "seconds": 1.5,
        }

    done = [job(0, "B"), job(0, "A"), job(1, "A")]  # seed 1 lacks B
    out = tmp_path / "levers.json"
    args = argparse.Namespace(tag="h100")
    results = {}
    scgen_levers._collect(args, done, results, out)
    block = json.loads(out.read_text())["s"]["e300@h100"]
    assert list(block["seeds"]) == ["0"]
    assert [r["cell_type"] for r in block["seeds"]["0"]["table"]] == ["A", "B"]
    assert block["seeds"]["0"]["seconds"] == 3.0
    assert block["device"] == "card" and block["training"]["epochs"] == 300
    assert block["what"] == scgen_levers.VARIANTS["e300"].what


def test_quality_adds_seeds_only_beside_todays_scgen_defaults():
    """``bench.quality --add-seeds`` refuses to mix seeds measured with other parameters or
    training settings (the tables before 2026-11-27 predicted otherwise), before any training;
    what it compares is what a scGen block stores (through JSON, as in quality.json)."""
    import pytest

    from bench import quality
    from engine.spec import RunSpec

    spec = RunSpec(model="scgen", data="-", predict="all", **quality.SCGEN["kang_counts_small"][2])
    today = json.loads(json.dumps(quality._settings(spec.to_dict())))
    assert today["params"]["output"] == "residual" and today["training"]["epochs"] == 100
    quality._same_params({"kang_counts_small": today}, "kang_counts_small")
    quality._same_params({}, None)  # nothing stored: nothing to mix
    with pytest.raises(SystemExit, match="rerun every seed without --add-seeds"):
        quality._same_params({"hpoly_small": {"seeds": {}}}, None)  # recorded nothing
    other = copy.deepcopy(today)
    other["params"]["output"] = "decoded"
    with pytest.raises(SystemExit, match="kang_counts_small"):
        quality._same_params({"kang_counts_small": other}, "kang_counts_small")
    other = copy.deepcopy(today)
    other["training"]["patience"] = 10
    with pytest.raises(SystemExit, match="training settings"):
        quality._same_params({"kang_counts_small": other}, None)


def test_scgen_diagnose_section_reads_against_the_baseline():
    """Each R² column is shown as its difference from the mean-shift baseline, mean ± sd over
    the seeds; directions and gains as they are."""
    row = {
        "cell_type": "Tuft",
        "scgen": 0.76,
        "weighted delta": 0.77,
        "gain (train)": 0.75,
        "gain (oracle)": 0.772,
        "meanshift": 0.785,
        "cell-weighted meanshift": 0.787,
        "meanshift gain (oracle)": 0.788,
        "scgen shift r": 0.32,
        "meanshift shift r": 0.37,
        "train gain": 1.14,
        "oracle gain": 0.70,
    }
    other = {**row, "scgen": 0.77, "scgen shift r": 0.34}
    text = "\n".join(
        report.scgen_diagnose(
            {"hpoly_small": {"date": "2026-11-27", "seeds": {"0": [row], "1": [other]}}}
        )
    )
    assert "#### hpoly_small (2 seeds, 2026-11-27)" in text
    line = next(x for x in text.splitlines() if x.startswith("| Tuft"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:4] == ["Tuft", "0.785", "-0.020 ± 0.007", "-0.015 ± 0.000"]
    assert cells[-3:] == ["0.33 ± 0.01", "0.37 ± 0.00", "1.14, 0.70"]
    assert "costs it most" not in text  # results without genes: no genes table


def test_scgen_diagnose_names_the_genes_that_cost_scgen_most():
    """Where scGen is below the baseline, the genes whose squared error exceeds the baseline's
    most over the seeds, with their real and predicted changes; types above it get no row."""

    def gene(name, cost, real, scgen):
        return {"gene": name, "cost": cost, "real": real, "scgen": scgen, "meanshift": 0.0}

    base = {
        "scgen shift r": 0.3,
        "meanshift shift r": 0.4,
        "train gain": 1.0,
        "oracle gain": 1.0,
        "weighted delta": 0.7,
        "gain (train)": 0.7,
        "gain (oracle)": 0.7,
        "cell-weighted meanshift": 0.7,
        "meanshift gain (oracle)": 0.7,
        "decoded at training types": 0.79,
        "identity removed": 0.77,
        "identity cos": -0.36,
    }
    tuft = {
        **base,
        "cell_type": "Tuft",
        "scgen": 0.76,
        "meanshift": 0.785,
        "interval": [-0.04, 0.01],
    }
    stem = {**base, "cell_type": "Stem", "scgen": 0.96, "meanshift": 0.95}
    s0 = [
        {**tuft, "genes": [gene("Ltc4s", 0.8, 0.7, -0.4), gene("Hck", 0.5, 0.9, -0.3)]},
        {**stem, "genes": [gene("Lgr5", 0.9, 1.0, 0.0)]},
    ]
    s1 = [
        {
            **tuft,
            "genes": [gene("Hck", 0.6, 1.0, -0.3), gene("Cd24a", 0.2, 1.1, -0.2)],
            "interval": [-0.03, -0.01],
        },
        {**stem, "genes": [gene("Lgr5", 0.9, 1.0, 0.0)]},
    ]
    text = "\n".join(
        report.scgen_diagnose({"hpoly": {"date": "2026-11-27", "seeds": {"0": s0, "1": s1}}})
    )
    line = next(x for x in text.splitlines() if x.startswith("| Tuft") and "Hck" in x)
    assert "Hck (+0.95 / -0.30 / +0.00), Ltc4s (+0.70 / -0.40 / +0.00), Cd24a" in line  # by cost
    assert "Lgr5" not in text  # Stem is above the baseline
    row = next(x for x in text.splitlines() if x.startswith("| Tuft") and "Hck" not in x)
    assert "+0.005 ± 0.000" in row and "-0.36 ± 0.00" in row  # decoded elsewhere; identity cos
    assert "-0.035 to +0.000 (above 0, below 1 of 2)" in row  # the interval: one seed below
