"""Which accelerators exist, and which one a run should use."""

from __future__ import annotations

from typing import Any

from engine.errors import ScwbError


def detect() -> dict[str, Any]:
    """CUDA GPUs (name, memory), Apple MPS, or the CPU."""
    import torch

    if torch.cuda.is_available():
        gpus = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / 2**30, 1)})
        return {"kind": "cuda", "name": gpus[0]["name"], "gpus": gpus, "count": len(gpus)}
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return {"kind": "mps", "name": "Apple MPS", "gpus": [], "count": 1}
    return {
        "kind": "cpu",
        "name": f"CPU ({torch.get_num_threads()} threads)",
        "gpus": [],
        "count": 0,
    }


def resolve(requested: str = "auto") -> str:
    """Turn 'auto' | 'cpu' | 'cuda' | 'mps' into the torch device type a run will use."""
    info = detect()
    if requested in ("auto", None, ""):
        return info["kind"]
    if requested == "cpu":
        return "cpu"
    if requested in ("cuda", "gpu"):
        if info["kind"] != "cuda":
            raise ScwbError("No CUDA GPU is visible on this machine; use --device cpu or auto.")
        return "cuda"
    if requested == "mps":
        if info["kind"] != "mps":
            raise ScwbError("Apple MPS is not available here; use --device cpu or auto.")
        return "mps"
    raise ScwbError(f"Unknown device {requested!r}; use auto, cpu, cuda or mps.")


def device_name(kind: str) -> str:
    import torch

    if kind == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return detect()["name"]
