"""Runs repeated over seeds: grouping, mean +- sd, paired comparison, CLI and Compare page."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from engine import cli, runs, seeds, workspace

# accuracy per seed: a network that wins on every seed, and one within the spread
NET = {0: 0.90, 1: 0.93, 2: 0.91}
BASE = {0: 0.85, 1: 0.88, 2: 0.87}
NOISY = {0: 0.86, 1: 0.89, 2: 0.85}


def _fake_run(root, rid, model, seed, acc, group="seeds-abc", params=None, data="fp1"):
    """A finished run folder as the engine writes it (run.json, status, metrics.json)."""
    d = root / rid
    d.mkdir(parents=True)
    spec = {
        "model": model,
        "task": "classify",
        "seed": seed,
        "group": group,
        "label_key": "cell_type",
        "params": params or {},
        "data_fingerprint": data,
        "dataset_name": "pbmc",
        "out": str(d),
        "created": f"2026-01-0{seed + 1}",
    }
    runs.write_json(d / "run.json", spec)
    runs.write_json(d / "metrics.json", {"test_accuracy": acc, "test_f1_macro": acc - 0.1})
    runs.update_status(d, state="completed")
    return d


@pytest.fixture
def group_dirs():
    root = workspace.runs_dir()
    dirs = []
    for model, values in (("mlp", NET), ("sk_logreg", BASE), ("logreg", NOISY)):
        for seed, acc in values.items():
            dirs.append(_fake_run(root, f"r-{model}-{seed}", model, seed, acc))
    return dirs


def test_group_aggregates_mean_and_sd_over_seeds(group_dirs):
    configs = {c.model: c for c in seeds.group(group_dirs)}
    assert set(configs) == {"mlp", "sk_logreg", "logreg"}
    mlp = configs["mlp"]
    assert mlp.seeds == [0, 1, 2] and not mlp.baseline and configs["sk_logreg"].baseline
    mean, sd, n = mlp.summary("test_accuracy")
    v = np.array(list(NET.values()))
    assert n == 3 and mean == pytest.approx(v.mean()) and sd == pytest.approx(v.std(ddof=1))
    rows = {r["model"]: r for r in seeds.table(list(configs.values()))}
    assert rows["mlp · pbmc"]["test_accuracy_values"] == NET
    assert rows["mlp · pbmc"]["test_f1_macro"] == pytest.approx(v.mean() - 0.1)


def test_config_key_ignores_seed_but_not_parameters():
    a = {"model": "mlp", "seed": 0, "params": {"dropout": 0.1}, "out": "x", "group": "g"}
    assert seeds.config_key(a) == seeds.config_key(a | {"seed": 5, "out": "y"})
    assert seeds.config_key(a) != seeds.config_key(a | {"params": {"dropout": 0.5}})


def test_different_parameters_are_different_configurations(tmp_path):
    dirs = [
        _fake_run(tmp_path, "a0", "mlp", 0, 0.9, params={"dropout": 0.1}),
        _fake_run(tmp_path, "a1", "mlp", 1, 0.9, params={"dropout": 0.1}),
        _fake_run(tmp_path, "b0", "mlp", 0, 0.8, params={"dropout": 0.5}),
    ]
    configs = seeds.group(dirs)
    assert [len(c.runs) for c in configs] == [2, 1]
    assert len({c.label for c in configs}) == 2  # same model and data: labels still differ


def test_paired_comparison_is_a_paired_t_test(group_dirs):
    configs = {c.model: c for c in seeds.group(group_dirs)}
    p = seeds.paired(configs["mlp"], configs["sk_logreg"], "test_accuracy")
    d = np.array([NET[s] - BASE[s] for s in NET])
    assert p.n == 3 and p.wins == 3
    assert p.diff == pytest.approx(d.mean()) and p.sd == pytest.approx(d.std(ddof=1))
    expect = stats.ttest_rel(list(NET.values()), list(BASE.values())).pvalue
    assert p.p == pytest.approx(expect) and p.p < 0.05
    assert p.verdict.startswith("mlp · pbmc is better")
    q = seeds.paired(configs["logreg"], configs["sk_logreg"], "test_accuracy")
    assert q.p > 0.05 and "within the seed-to-seed spread" in q.verdict
    assert "mlp · pbmc better on 3 of 3" in p.text()


def test_a_loss_on_every_seed_below_significance_is_said_as_such():
    """'mlp − logreg: -0.05714 ± 0.038 (better on 0/3): within the seed-to-seed spread' read
    as a tie although the MLP lost on every seed (a browser pass)."""
    p = seeds.Paired(
        "mlp", "logreg", "test_accuracy", n=3, diff=-0.05714, sd=0.038, p=0.12, wins=0, losses=3
    )
    text = p.text()
    assert "-0.057 ± 0.038" in text and "mlp better on 0 of 3" in text
    assert "logreg is better on every seed, but with 3 seeds that is not beyond" in text
    assert "more seeds would tell" in text


def test_identical_results_on_every_seed_are_said_so():
    """Two deterministic baselines read '+0.00 ± 0.00' beside real differences."""
    a = seeds.Config("a", "pca", "d", label="pca", runs={s: {"test_mse": 0.5} for s in range(3)})
    b = seeds.Config("b", "pca2", "d", label="pca2", runs={s: {"test_mse": 0.5} for s in range(3)})
    text = seeds.paired(a, b, "test_mse").text()
    assert text.endswith("the same value on every seed: no difference.") and "±" not in text


def test_lower_is_better_metrics_count_wins_the_other_way():
    a = seeds.Config(
        "a", "ae", "d", label="ae", runs={s: {"test_mse": 0.1 + s / 100} for s in range(3)}
    )
    b = seeds.Config(
        "b", "pca", "d", label="pca", runs={s: {"test_mse": 0.2 + s / 90} for s in range(3)}
    )
    p = seeds.paired(a, b, "test_mse")
    assert p.diff < 0 and p.wins == 3 and p.verdict.startswith("ae is better")


def test_pairs_compare_every_two_runs_a_model_before_a_baseline(group_dirs):
    configs = seeds.group(group_dirs)
    got = {(p.a, p.b) for p in seeds.pairs(configs, "test_accuracy")}
    assert got == {
        ("mlp · pbmc", "sk_logreg · pbmc"),
        ("logreg · pbmc", "sk_logreg · pbmc"),
        ("mlp · pbmc", "logreg · pbmc"),
    }


def test_one_seed_says_there_is_no_spread(tmp_path):
    configs = seeds.group(
        [_fake_run(tmp_path, "a", "mlp", 0, 0.9), _fake_run(tmp_path, "b", "sk_logreg", 0, 0.8)]
    )
    p = seeds.paired(configs[0], configs[1], "test_accuracy")
    assert p.n == 1 and math.isnan(p.p) and "no seed-to-seed spread" in p.verdict


def test_cli_compare_group(group_dirs, capsys):
    assert cli.main(["compare", "--group", "seeds-abc", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "test_accuracy"
    by = {r["model"]: r for r in out["table"]}
    assert by["mlp · pbmc"]["seeds"] == 3
    assert by["mlp · pbmc"]["test_accuracy"] == pytest.approx(np.mean(list(NET.values())))
    assert any(p["a"] == "mlp · pbmc" and p["p"] < 0.05 for p in out["paired"])
    assert cli.main(["compare", "--group", "seeds-abc"]) == 0
    text = capsys.readouterr().out
    assert "mlp · pbmc (3 seeds): Accuracy (test) 0.913 ±" in text and "is better" in text
    assert cli.main(["compare", "--group", "nope"]) == 2
    assert "no run belongs to the group" in capsys.readouterr().err


def test_compare_page_shows_mean_sd_and_paired_test(group_dirs):
    from tests.test_app import app

    at = app("compare")
    assert not at.exception
    table = at.dataframe[0].value
    row = table[table["model"] == "mlp · pbmc"].iloc[0]
    assert row["seeds"] == 3 and row["test_accuracy"].startswith("0.913 ± 0.015")
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    seeds_trace = next(t for t in fig["data"] if t["y"][0] == "mlp · pbmc")
    assert sorted(seeds_trace["x"]) == sorted(NET.values())
    assert seeds_trace["text"] == ["seed 0", "seed 1", "seed 2"]
    lines = " ".join(m.value for m in at.markdown).replace("\\", "")
    assert "mlp · pbmc is better" in lines and "within the seed-to-seed spread" in lines
    # every run: each configuration's seeds together and in order (a pass read 0, 1, 2, 2, 0, 1)
    every = at.dataframe[1].value
    assert list(every["seed"]) == [0, 1, 2] * 3, every
    models = [name.split(" · ")[0] for name in every["run"]]
    assert [models[i] for i in (0, 3, 6)] == sorted(set(models), key=models.index)
    assert all(models[i] == models[i - i % 3] for i in range(9)), models


def test_unfinished_runs_do_not_blank_the_comparison(group_dirs, capsys):
    """A queued run (no metrics), a cancelled one (partial metrics) and one without a seed in the
    group are left out; the finished ones still compare."""
    root = workspace.runs_dir()
    q = root / "r-queued"
    q.mkdir()
    runs.write_json(
        q / "run.json", {"model": "mlp", "seed": 7, "group": "seeds-abc", "submitted_ns": 1}
    )
    runs.update_status(q, state="queued")
    c = _fake_run(root, "r-cancel", "mlp", 2, 0.10)
    runs.update_status(c, state="cancelled")
    bad = _fake_run(root, "r-noseed", "mlp", 0, 0.5)
    spec = runs.read_json(bad / "run.json")
    runs.write_json(bad / "run.json", spec | {"seed": None})
    configs = seeds.group([*group_dirs, q, c, bad])
    assert [len(x.runs) for x in configs] == [3, 3, 3]
    assert cli.main(["compare", "--group", "seeds-abc"]) == 0
    out = capsys.readouterr().out
    assert "mlp · pbmc (3 seeds): Accuracy (test) 0.913 ± 0.015" in out and "is better" in out


def test_a_metric_some_runs_lack_is_kept_and_counted(tmp_path):
    a = _fake_run(tmp_path, "a0", "mlp", 0, 0.9)
    runs.write_json(a / "metrics.json", {"test_accuracy": 0.9})  # no F1 in the first run
    dirs = [
        a,
        _fake_run(tmp_path, "a1", "mlp", 1, 0.92),
        _fake_run(tmp_path, "b0", "sk_logreg", 0, 0.8),
    ]
    rows = {r["model"]: r for r in seeds.table(seeds.group(dirs))}
    assert rows["mlp · pbmc"]["test_f1_macro_n"] == 1 and rows["mlp · pbmc"]["seeds"] == 2
    assert rows["sk_logreg · pbmc"]["test_f1_macro"] == pytest.approx(0.7)
    from ui.figures import mean_sd_text

    text, _ = mean_sd_text(list(rows.values()), ["test_accuracy", "test_f1_macro"])
    assert text.loc[0, "test_f1_macro"] == "0.8200 (1 of 2)"


def test_runs_of_different_data_are_not_paired(tmp_path):
    dirs = [
        _fake_run(tmp_path, "a0", "mlp", 0, 0.9, data="fpA"),
        _fake_run(tmp_path, "a1", "mlp", 1, 0.91, data="fpA"),
        _fake_run(tmp_path, "b0", "sk_logreg", 0, 0.5, data="fpB"),
        _fake_run(tmp_path, "b1", "sk_logreg", 1, 0.52, data="fpB"),
    ]
    configs = seeds.group(dirs)
    assert seeds.scopes(configs) == 2 and seeds.pairs(configs, "test_accuracy") == []


def test_seeds_scored_on_other_test_cells_are_not_paired(tmp_path):
    """The same seed on data with the same values and cell names but other labels (a
    re-annotated copy) stratifies another split: the pages said 'paired on the same test
    cells'. Each run's split is checked; such seeds are left out and counted."""

    def run(rid, model, seed, acc, test):
        d = _fake_run(tmp_path, rid, model, seed, acc)
        np.savez(d / "split.npz", train=np.arange(10, 20), val=np.arange(20, 22), test=test)
        return d

    same, other = np.arange(0, 10), np.arange(5, 15)
    dirs = [
        run("a0", "mlp", 0, 0.90, same),
        run("a1", "mlp", 1, 0.93, same),
        run("a2", "mlp", 2, 0.91, same[::-1]),  # order does not matter, the cells do
        run("b0", "sk_logreg", 0, 0.85, same),
        run("b1", "sk_logreg", 1, 0.88, other),  # another split on seed 1
        run("b2", "sk_logreg", 2, 0.87, same),
    ]
    (p,) = seeds.pairs(seeds.group(dirs), "test_accuracy")
    assert (p.n, p.other_cells) == (2, 1)
    assert p.diff == pytest.approx(((0.90 - 0.85) + (0.91 - 0.87)) / 2)
    assert "1 shared seed left out (scored on other test cells)" in p.text()
    only = seeds.pairs(seeds.group([dirs[1], dirs[4]]), "test_accuracy")
    assert [(q.n, q.other_cells) for q in only] == [(0, 1)]
    assert "other test cells on every shared seed" in only[0].text()
    assert seeds.test_cells(tmp_path / "nowhere") is None


def test_same_values_are_no_spread_and_a_constant_gap_names_the_winner():
    a = seeds.Config("a", "mlp", "d", label="mlp", runs={s: {"m": 0.7} for s in range(3)})
    b = seeds.Config("b", "lr", "d", label="lr", runs={s: {"m": 0.6} for s in range(3)})
    assert a.summary("m") == (pytest.approx(0.7), 0.0, 3)  # not 1e-16
    acc = {s: {"test_accuracy": v} for s, v in enumerate([0.8, 0.85, 0.9])}
    x = seeds.Config(
        "x",
        "mlp",
        "d",
        label="mlp",
        runs={s: {"test_accuracy": m["test_accuracy"] + 0.1} for s, m in acc.items()},
    )
    y = seeds.Config("y", "lr", "d", label="lr", runs=acc)
    p = seeds.paired(x, y, "test_accuracy")
    assert p.sd == 0 and p.verdict == "mlp is better by the same amount on every seed"
    one = seeds.paired(
        seeds.Config("o", "mlp", "d", label="mlp", runs={0: {"test_accuracy": 0.9}}),
        seeds.Config("p", "lr", "d", label="lr", runs={0: {"test_accuracy": 0.869}}),
        "test_accuracy",
    )  # one seed has no spread: "+0.031 ± 0.000" read as a measured one (a browser pass)
    assert one.text().startswith("mlp − lr: Accuracy (test) +0.031 (paired over 1 seed;")
    assert seeds.paired(a, a, "m").verdict.endswith("no difference")
    assert seeds.paired(b, seeds.Config("c", "c", "d", label="c"), "m").verdict.startswith(
        "no seed"
    )


def test_cli_refuses_an_unknown_metric_and_writes_valid_json(group_dirs, capsys):
    assert cli.main(["compare", "--group", "seeds-abc", "--metric", "nope"]) == 2
    assert "no run has the metric 'nope'" in capsys.readouterr().err
    root = workspace.runs_dir()
    _fake_run(root, "r-one", "pca", 0, 0.5, group="solo")
    _fake_run(root, "r-two", "mlp", 0, 0.6, group="solo")
    assert cli.main(["compare", "--group", "solo", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # NaN would not parse as strict JSON
    assert out["paired"][0]["p"] is None and "one shared seed" in out["paired"][0]["verdict"]


def test_mean_sd_text_keeps_its_digits():
    """A perfect accuracy read "1 ± 0" beside "0.9915 ± 0.012"; trailing zeros are kept, and
    a large value has no bare point ("1467", not "1467.")."""
    c = seeds.Config("k", "mlp", "d")
    c.runs = {0: {"acc": 1.0, "epochs": 1420.0}, 1: {"acc": 1.0, "epochs": 1502.0}}
    assert c.text("acc") == "1.000 ± 0.0"
    assert c.text("epochs") == "1461 ± 58"
    c.runs = {0: {"acc": 0.98305}, 1: {"acc": 1.0}}
    assert c.text("acc") == "0.9915 ± 0.012"


def test_a_metric_column_shows_one_number_of_decimals():
    """A browser pass: Compare's column read "0.9915 ± 0.0030" above "0.891 ± 0.012" (each
    row its own significant digits). A column now has one number of decimals, two significant
    digits of its smallest spread; a column whose spread needs more than 6 keeps its digits."""
    a, b, c = (seeds.Config(m, m, "d", label=m) for m in ("mlp", "logreg", "sk_logreg"))
    a.runs = {0: {"acc": 0.9900, "loss": 1e-9}, 1: {"acc": 0.9930, "loss": 2e-9}}
    b.runs = {0: {"acc": 0.8827, "loss": 3e-9}, 1: {"acc": 0.8997, "loss": 1e-9}, 2: {}}
    c.runs = {0: {"acc": 0.75}}
    rows = {r["model"]: r for r in seeds.table([a, b, c], ["acc", "loss"])}
    assert rows["mlp"]["acc_text"] == "0.9915 ± 0.0021"
    assert rows["logreg"]["acc_text"] == "0.8912 ± 0.0120 (2 of 3)"
    assert rows["sk_logreg"]["acc_text"] == "0.7500"
    assert rows["mlp"]["loss_text"] == a.text("loss")  # 7 decimals: left as it was


def test_compare_opens_on_a_group_worth_ranking_and_names_each_seed(group_dirs):
    """A newer group of one run (a cancelled run submitted alone) was picked alone: "One row:
    nothing to rank". The newest group of two runs or more is picked; its rows say their seed
    (three seeds of a model looked identical)."""
    from tests.test_app import app

    lone = _fake_run(workspace.runs_dir(), "r-lone", "mlp", 0, 0.5, group="seeds-new")
    runs.update_status(lone, state="cancelled")
    at = app("compare")
    picked = at.multiselect[0].value
    assert "r-lone" not in picked and len(picked) == 9
    every = at.dataframe[-1].value
    assert sorted(every["seed"].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]

    # ties are no wins: logreg better on one seed of three is not "better on every seed"
    tie = seeds.Paired("mlp", "logreg", "test_accuracy", n=3, diff=-0.003, sd=0.006, p=0.42,
                       wins=0, losses=1)  # fmt: skip
    assert "every seed" not in tie.verdict and "within the seed-to-seed spread" in tie.verdict


def test_the_table_marks_only_a_winner_beyond_the_spread(group_dirs):
    """A browser pass: the over-seeds table marked the best mean green while the verdict under
    it said 'within the seed-to-seed spread: no clear winner'."""
    configs = {c.model: c for c in seeds.group(group_dirs)}
    every = list(configs.values())
    assert seeds.clear_best(every, "test_accuracy") is configs["mlp"]  # beyond both others
    close = [configs["logreg"], configs["sk_logreg"]]  # p > 0.05 between them
    assert seeds.clear_best(close, "test_accuracy") is None
    a = seeds.Config(
        "a", "ae", "d", label="ae", runs={s: {"test_mse": 0.1 + s / 100} for s in (0, 1, 2)}
    )
    b = seeds.Config(
        "b", "pca", "d", label="pca", runs={s: {"test_mse": 0.2 + s / 90} for s in (0, 1, 2)}
    )
    assert seeds.clear_best([b, a], "test_mse") is a  # lower is better
    b.scope = "other data"  # values of other data or labels do not rank
    assert seeds.clear_best([b, a], "test_mse") is None


def test_compare_page_marks_the_clear_winner_only(group_dirs):
    from tests.test_app import app

    marked = str(app("compare").dataframe[0].proto.arrow_data.styler.styles)
    assert "c7e9c0" in marked  # the MLP: beyond the spread against both
    for d in group_dirs:  # keep logreg and the baseline only: no clear winner between them
        if "-mlp-" in d.name:
            import shutil

            shutil.rmtree(d)
    at = app("compare")
    styles = str(at.dataframe[0].proto.arrow_data.styler.styles)
    assert "c7e9c0" not in styles
    assert any(
        "better than every other one beyond the seed-to-seed spread" in c.value for c in at.caption
    )


def test_huge_metric_values_compare_without_numpy_warnings(tmp_path, capsys):
    """A hostile pass: 1e308 in a hand-edited metrics.json made `compare` print numpy's
    'RuntimeWarning: overflow encountered' on stderr (exit 0)."""
    import warnings

    dirs = [_fake_run(tmp_path, f"h{s}", "mlp", s, 1e308, group="g") for s in range(3)]
    dirs += [_fake_run(tmp_path, f"b{s}", "sk_logreg", s, -1e308, group="g") for s in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        configs = seeds.group(dirs)
        texts = [c.text("test_accuracy") for c in configs]
        paired = seeds.paired(configs[0], configs[1], "test_accuracy").text()
    assert texts and paired


def test_a_model_that_predicts_one_class_for_every_cell_is_said(tmp_path, capsys):
    """A browser pass: an MLP of 20 epochs said 'progenitor' for every test cell (accuracy
    0.5000 ± 0.0) and Compare called logreg better beyond the spread, without a word. Such
    seeds are named on Compare, by `compare` on the command line, and on Results."""
    assert (
        seeds.predicted_one_class({"confusion": [[0, 4], [0, 6]], "classes": ["Ery", "progenitor"]})
        == "progenitor"
    )
    assert seeds.predicted_one_class({"confusion": [[4, 1], [0, 6]], "classes": ["a", "b"]}) is None
    assert seeds.predicted_one_class({"confusion": [[0, 0], [0, 6]], "classes": ["a", "b"]}) is None
    assert seeds.predicted_one_class({"confusion": "x", "classes": ["a"]}) is None
    root = workspace.runs_dir()
    for seed in (0, 1):
        d = _fake_run(root, f"r-mlp-{seed}", "mlp", seed, 0.5, group="flat")
        metrics = runs.read_metrics(d / "metrics.json", {})
        metrics |= {"confusion": [[0, 4], [0, 4]], "classes": ["Ery", "progenitor"]}
        runs.write_json(d / "metrics.json", metrics)
        _fake_run(root, f"r-lr-{seed}", "logreg", seed, 0.9, group="flat")
    configs = seeds.group(sorted(root.iterdir()))
    (line,) = seeds.one_class_runs(configs)
    assert line.startswith("mlp · pbmc: seeds 0, 1 of 2 predicted one class (progenitor)"), line
    assert cli.main(["compare", "--group", "flat"]) == 0
    assert "note: mlp · pbmc: seeds 0, 1 of 2 predicted one class" in capsys.readouterr().out
