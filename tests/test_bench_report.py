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
