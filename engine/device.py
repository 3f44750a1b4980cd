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


def usable_cores() -> int:
    """CPU cores this process may run on (a container's or taskset's share, not the host's)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_count(kind: str, n: int) -> None:
    """Refuse more devices than this machine has for one run: on a CPU each device is a process
    (``--devices 1000`` started a thousand), on CUDA each a GPU."""
    if n <= 1:
        return
    if kind == "cuda":
        import torch

        have, what = torch.cuda.device_count(), "CUDA GPU(s)"
    elif kind == "cpu":
        have, what = usable_cores(), "CPU core(s), one process each"
    else:
        have, what = 1, f"{kind} device"
    if n > have:
        raise ScwbError(
            f"--devices {n}: this machine has {have} {what}; use at most {have} (nothing ran)."
        )


def device_name(kind: str) -> str:
    import torch

    if kind == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return detect()["name"]
