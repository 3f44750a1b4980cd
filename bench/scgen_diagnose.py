"""Why scGen loses to the mean-shift baseline on some cell types (issue 15): its decoded change
taken apart on the app's own leave-one-out models, against the baseline on the same cells.

    python -m bench.scgen_diagnose [--sets hpoly_small] [--seeds 0,1,2] [--work DIR]

Each (set, seed) trains the app's default scGen leaving one cell type out at a time (as
``bench.quality --only scgen`` does; ``--work`` keeps the runs and reuses them), then scores,
per held-out type, predictions that differ only after training, so every column uses the same
weights:

- ``scgen``: the app's prediction (control cells + the decoded change, the paired vector);
  checked against the run's own ``loo.csv``;
- ``weighted delta``: the paired vector with each training type weighted by its cells (the
  harmonic mean of its control and stimulated counts), as the cell-weighted mean-shift;
- ``gain (train)``: the decoded change times one gain fitted by least squares on the training
  types (their observed shift on their decoded change): a calibration that sees no held-out cell;
- ``gain (oracle)`` for scGen and the mean-shift: the change times the gain that best fits the
  held-out type's real shift. It uses the answer, so it is no method: it says how far getting the
  amplitude right could go, and so whether a loss is one of amplitude or of direction;
- ``shift r``: the Pearson correlation, over genes, of the predicted and the real change
  (stimulated - control mean of the held-out type): the direction alone;
- ``decoded at training types``: the same vector decoded at every training type's control cells
  (their changes averaged over types) instead of at the held-out type's: one change for every
  type, as the mean-shift's, but the model's. Where it does better than ``scgen``, what loses is
  where the change is read, not the vector;
- ``identity removed``: the vector without its component along the held-out type's identity
  (its control cells' latent mean minus the mean of every type's), and ``identity cos``, the
  cosine of the two: a vector pointing away from a type's identity, decoded there, lowers the
  type's own markers;
- ``interval``: the 95% interval of scGen's R² minus the baseline's over the held-out type's
  cells (``engine.evaluate.meanshift_gap_interval``, as each run's metrics give it): where it
  spans 0, these cells cannot tell the two apart;
- ``genes``: the genes where scGen's squared error exceeds the baseline's most, with the real,
  scGen's and the baseline's change.

Results go to bench/results/scgen_diagnose.json; ``python -m bench.report`` renders them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bench.quality import OUT, SCGEN, prepared
from engine import io, predict, train
from engine.evaluate import meanshift_gap_interval, r2_pearson
from engine.perturb import mean_shift
from engine.spec import RunSpec
from engine.tasks.perturb import _decode, _encode

RESULT = OUT / "scgen_diagnose.json"


def _trained(set_key: str, seed: int, data: str, work: Path) -> Path:
    """The leave-one-out run of this seed: one kept in ``work`` when it was trained on this
    data (the engine's fingerprint: values and names) with this seed, else a new one."""
    run = work / f"{set_key}-s{seed}"
    done = (run / "model.json").exists() and (run / "loo.csv").exists()  # not one cut short
    spec = json.loads((run / "run.json").read_text()) if done else {}
    if spec.get("seed") != seed or spec.get("data_fingerprint") != io.fingerprint(io.read(data)):
        design = SCGEN[set_key][2]
        train.run(
            RunSpec(model="scgen", data=data, predict="all", seed=seed, out=str(run), **design)
        )
    return run


def _gain(change: np.ndarray, shift: np.ndarray) -> float:
    """The least-squares gain of ``shift`` on ``change`` (over genes)."""
    return float(change @ shift / (change @ change))


def _costly_genes(genes, change, baseline, true, n: int = 10) -> list[dict]:
    """The ``n`` genes where ``change``'s squared error exceeds ``baseline``'s most."""
    cost = (change - true) ** 2 - (baseline - true) ** 2
    return [
        {
            "gene": str(genes[i]),
            "cost": float(cost[i]),
            "real": float(true[i]),
            "scgen": float(change[i]),
            "meanshift": float(baseline[i]),
        }
        for i in np.argsort(-cost)[:n]
    ]


def diagnose(run: Path, data: str, seed: int = 0) -> list[dict]:
    """One row per held-out cell type of a leave-one-out scGen run."""
    import anndata as ad

    task = predict.load(run)
    a = ad.read_h5ad(data)
    x = io.dense(task.setup.matrix(a)[0]).astype(np.float32)
    d = task.extra["design"]
    cond = a.obs[d["condition_key"]].astype(str).to_numpy()
    types = a.obs[d["cell_type_key"]].astype(str).to_numpy()
    logged = pd.read_csv(run / "loo.csv").set_index("cell_type")["r2_mean_all"]
    genes = np.asarray(a.var_names)
    rows = []
    for part in task.parts:
        t, m = part["target"], part["module"]
        split = np.load(run / part["folder"] / "split.npz")
        trained = np.zeros(len(x), dtype=bool)
        trained[np.concatenate([split["train"], split["val"]])] = True
        z = _encode(m, x, "cpu")

        def change(mask: np.ndarray, delta: np.ndarray, z=z, m=m) -> np.ndarray:
            """The mean decoded change of these cells: decode(z + delta) - decode(z)."""
            return (_decode(m, z[mask] + delta, "cpu") - _decode(m, z[mask], "cpu")).mean(0)

        shifts, weights, observed, changes = [], [], [], []
        for u in sorted(set(types[trained])):
            c = trained & (types == u) & (cond == d["ctrl"])
            s = trained & (types == u) & (cond == d["stim"])
            if c.any() and s.any():
                shifts.append(z[s].mean(0) - z[c].mean(0))
                weights.append(2 / (1 / c.sum() + 1 / s.sum()))
                observed.append(x[s].mean(0) - x[c].mean(0))
        paired = np.mean(shifts, axis=0)
        if not np.allclose(paired, part["delta"], atol=1e-4):
            raise SystemExit(f"{run}: {t}: the vector differs from the run's own")
        weighted = np.average(shifts, axis=0, weights=weights)
        ctrl = (types == t) & (cond == d["ctrl"])
        real = (types == t) & (cond == d["stim"])
        cm, rm = x[ctrl].mean(0), x[real].mean(0)
        per_cell = _decode(m, z[ctrl] + paired, "cpu") - _decode(m, z[ctrl], "cpu")
        ch = per_cell.mean(0)
        for u in sorted(set(types[trained])):  # the training types' own decoded changes
            c = trained & (types == u) & (cond == d["ctrl"])
            if c.any() and (trained & (types == u) & (cond == d["stim"])).any():
                changes.append(change(c, paired))
        known = (trained | ctrl) & (cond == d["ctrl"])  # control cells a prediction may see
        centroids = [z[known & (types == u)].mean(0) for u in sorted(set(types[known]))]
        identity = z[ctrl].mean(0) - np.mean(centroids, axis=0)
        unit = identity / np.linalg.norm(identity)
        no_identity = (paired - (paired @ unit) * unit).astype(np.float32)
        gain_train = _gain(np.concatenate(changes), np.concatenate(observed))
        ms = mean_shift(x, cond, types, trained, d["ctrl"], d["stim"])
        ms_w = mean_shift(x, cond, types, trained, d["ctrl"], d["stim"], weighted=True)
        true = rm - cm
        row = {
            "cell_type": t,
            "scgen": r2_pearson(cm + ch, rm),
            "weighted delta": r2_pearson(cm + change(ctrl, weighted), rm),
            "gain (train)": r2_pearson(cm + gain_train * ch, rm),
            "gain (oracle)": r2_pearson(cm + _gain(ch, true) * ch, rm),
            "meanshift": r2_pearson(cm + ms, rm),
            "cell-weighted meanshift": r2_pearson(cm + ms_w, rm),
            "meanshift gain (oracle)": r2_pearson(cm + _gain(ms, true) * ms, rm),
            "decoded at training types": r2_pearson(cm + np.mean(changes, axis=0), rm),
            "identity removed": r2_pearson(cm + change(ctrl, no_identity), rm),
            "identity cos": float(paired @ unit / np.linalg.norm(paired)),
            "scgen shift r": float(np.corrcoef(ch, true)[0, 1]),
            "meanshift shift r": float(np.corrcoef(ms, true)[0, 1]),
            "train gain": gain_train,
            "oracle gain": _gain(ch, true),
            "genes": _costly_genes(genes, ch, ms, true),
            "interval": list(
                meanshift_gap_interval(x[ctrl] + per_cell, x[real], x[ctrl], ms, seed=seed)
            ),
        }
        if abs(row["scgen"] - logged[t]) > 1e-4:
            raise SystemExit(f"{run}: {t}: R² {row['scgen']:.5f} but loo.csv says {logged[t]:.5f}")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default="hpoly_small")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--work", help="folder for the trained runs (kept and reused)")
    p.add_argument("--out", default=str(RESULT))
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    seeds = [int(s) for s in args.seeds.split(",")]
    out_path = Path(args.out)
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for set_key in args.sets.split(","):
            name, recipe, _ = SCGEN[set_key]
            data = prepared(name, recipe, work)
            per_seed = {}
            for seed in seeds:
                t0 = time.time()
                per_seed[str(seed)] = diagnose(_trained(set_key, seed, data, work), data, seed)
                print(f"{set_key} seed {seed}: {time.time() - t0:.0f} s", flush=True)
            result[set_key] = {"seeds": per_seed, "date": time.strftime("%Y-%m-%d")}
    out_path.write_text(json.dumps(result, indent=1))
    print(out_path)


if __name__ == "__main__":
    main()
