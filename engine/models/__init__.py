"""The model registry: name -> task, the input it needs, defaults with help text, and a builder.

Torch-free: the app process reads it to draw forms and validate them. ``ModelInfo.builder``
names the function (``module:function``) that builds the network, imported only when a run
trains or a saved model is loaded. Adding a model is one entry here and one module beside this
file (see CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ScwbError

TASKS = {
    "classify": "Classify cells",
    "reconstruct": "Reconstruct and score abnormality",
    "embed": "Learn a latent embedding",
    "perturb": "Predict a perturbation",
}


@dataclass(frozen=True)
class Param:
    default: Any
    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    # what runs saved before this parameter existed ran with (None: the default)
    before: Any = None


# scGen's predictions in a few words (the Results page, the benchmark report)
SCGEN_OUTPUTS = {
    "decoded": "the decoder's output",  # the scGen package's prediction
    "residual": "each control cell + the decoded change",
}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: str
    title: str
    doc: str
    builder: str = ""  # "engine.models.module:function" building the network (or estimator)
    needs: str = "any"  # 'any' | 'counts' (raw integer counts) | 'lognorm' (not raw counts)
    lognorm_counts: bool = False  # raw counts are log-normalised (CP10k) before it reads them
    kind: str = "torch"  # 'torch' | 'sklearn'
    baseline: bool = False
    params: dict[str, Param] = field(default_factory=dict)
    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 10
    obsm_key: str = ""  # where the latent goes; default X_<name>

    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}

    @property
    def latent_key(self) -> str:
        return self.obsm_key or f"X_{self.name}"

    def needs_for(self, params: dict[str, Any]) -> str:
        """What the input must hold with these parameters (a Gaussian VAE takes any values)."""
        if self.needs == "counts" and params.get("likelihood") == "gaussian":
            return "any"
        return self.needs


def _widths(text: Any) -> tuple[int, ...]:
    if isinstance(text, (list, tuple)):
        return tuple(int(v) for v in text)
    parts = [p for p in str(text).replace(" ", "").split(",") if p]
    return tuple(int(p) for p in parts)


MAX_WIDTH = 65_536
ACTIVATION = Param("relu", "hidden activation", choices=("relu", "sigmoid", "tanh"))
WEIGHT_DECAY = Param(0.0, "L2 penalty on the weights", low=0, high=10)

REGISTRY: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        ModelInfo(
            "logreg",
            "classify",
            "Logistic regression (torch)",
            "One linear layer; softmax + cross-entropy (sigmoid + BCE for two classes) with an L2 "
            "penalty as scikit-learn's (C); convex, so fitted full-batch with L-BFGS to its optimum.",
            builder="engine.models.classifier:build_logreg",
            params={
                "C": Param(
                    1.0,
                    "inverse L2 strength, as scikit-learn's C: penalty ||W||^2 / (2 C n_train)",
                    low=1e-6,
                    high=1e6,
                ),
                "solver": Param(
                    "lbfgs",
                    "lbfgs: full-batch to the optimum (falls back to adam when the training "
                    "matrix does not fit the memory budget or on several devices); adam: mini-batches",
                    choices=("lbfgs", "adam"),
                ),
            },
            epochs=50,
            lr=1e-2,
        ),
        ModelInfo(
            "mlp",
            "classify",
            "MLP classifier",
            "Fully connected hidden layers (default one of 50) with a chosen activation and dropout.",
            builder="engine.models.classifier:build_mlp",
            params={
                "hidden": Param("50", "hidden layer widths, comma-separated"),
                "activation": ACTIVATION,
                "dropout": Param(0.1, "dropout after each hidden layer", low=0, high=0.9),
                "weight_decay": WEIGHT_DECAY,
            },
            epochs=50,
        ),
        ModelInfo(
            "sk_logreg",
            "classify",
            "Baseline: scikit-learn LogisticRegression",
            "sklearn LogisticRegression (lbfgs, L2) on the same training cells.",
            builder="engine.models.baselines:build_sk_logreg",
            kind="sklearn",
            baseline=True,
            params={
                "C": Param(1.0, "inverse regularisation strength", low=1e-6, high=1e6),
                "max_iter": Param(1000, "solver iterations", low=1, high=100_000),
            },
        ),
        ModelInfo(
            "autoencoder",
            "reconstruct",
            "Autoencoder (scQUEST)",
            "Encoder n_in->64->32->4 mirrored; MSE; per-cell reconstruction error = abnormality.",
            builder="engine.models.autoencoder:build",
            params={
                "widths": Param("64,32,4", "encoder widths, the last is the latent size"),
                "activation": ACTIVATION,
                "output": Param(
                    "auto",
                    "sigmoid output for MinMax-scaled input",
                    choices=("auto", "sigmoid", "linear"),
                ),
            },
            # a 4-wide bottleneck needs many steps: at 50 epochs it lost to a 4-component PCA
            # (docs/BENCHMARKS.md, abnormality); early stopping ends it sooner on large data
            epochs=500,
            patience=50,
        ),
        ModelInfo(
            "pca",
            "reconstruct",
            "Baseline: PCA",
            "sklearn PCA with the same latent size; reconstruction = inverse transform.",
            builder="engine.models.baselines:build_pca",
            kind="sklearn",
            baseline=True,
            obsm_key="X_pca_baseline",
            params={
                "n_components": Param(
                    4, "number of components (match the network's latent size)", low=1, high=4096
                )
            },
        ),
        ModelInfo(
            "vae",
            "embed",
            "VAE (scVI-style; counts, or Gaussian)",
            "Library-size aware VAE with NB (default), ZINB or Gaussian likelihood; optional batch covariate.",
            builder="engine.models.vae:build",
            needs="counts",
            params={
                "n_hidden": Param(128, "hidden units per layer", low=1, high=MAX_WIDTH),
                "n_latent": Param(10, "latent dimensions", low=1, high=4096),
                "n_layers": Param(1, "hidden layers", low=1, high=5),
                "dropout": Param(0.1, "encoder dropout", low=0, high=0.9),
                "likelihood": Param(
                    "nb",
                    "count model (gaussian for normalised data)",
                    choices=("nb", "zinb", "gaussian"),
                ),
                "batch_key": Param("", "obs column with the batch (optional)"),
                "kl_warmup": Param(
                    20, "epochs over which the KL weight rises to 1", low=0, high=10_000
                ),
            },
            epochs=100,
        ),
        ModelInfo(
            "pca_embed",
            "embed",
            "Baseline: PCA embedding",
            "sklearn PCA with the VAE's latent size (raw counts are log-normalised first).",
            builder="engine.models.baselines:build_pca",
            kind="sklearn",
            lognorm_counts=True,
            baseline=True,
            params={"n_components": Param(10, "number of components", low=1, high=4096)},
        ),
        ModelInfo(
            "scgen",
            "perturb",
            "scGen (VAE + latent arithmetic)",
            "VAE on log-normalised expression (2x800, BatchNorm, LeakyReLU, dropout 0.2, latent 100, KL 5e-5); "
            "prediction = each control cell + the decoded change, decode(latent + stimulation "
            "vector) - decode(latent); output=decoded for the decoder's output alone (the package's).",
            builder="engine.models.scgen:build",
            needs="lognorm",
            params={
                "n_hidden": Param(800, "hidden units per layer", low=1, high=MAX_WIDTH),
                "n_layers": Param(2, "hidden layers", low=1, high=5),
                "n_latent": Param(100, "latent dimensions", low=1, high=4096),
                "dropout": Param(0.2, "dropout", low=0, high=0.9),
                "kl_weight": Param(5e-5, "weight of the KL term", low=0, high=1e3),
                "delta": Param(
                    "paired",
                    "stimulation vector: 'paired' = mean over cell types seen in both conditions of "
                    "their latent shift; 'sampled' = the scGen package's balanced resampling of all "
                    "training cells of each condition",
                    choices=("paired", "sampled"),
                    before="sampled",
                ),
                "delta_cell_types": Param(
                    "",
                    "cell types the stimulation vector is computed from (empty: all training types; the "
                    "paired vector uses those with training cells of both conditions)",
                ),
                "decoder": Param(
                    "mirrored",
                    "decoder: 'mirrored' = the encoder's layers in reverse and a linear output; "
                    "'package' = the scGen package's (scvi-tools FCLayers): n_layers - 1 hidden "
                    "layers, BatchNorm, LeakyReLU and dropout on the output layer too",
                    choices=("mirrored", "package"),
                ),
                "output": Param(
                    "residual",
                    "predicted cells: 'decoded' = the decoder's output at each control cell's latent + "
                    "the vector (the scGen package's); 'residual' = each control cell's own "
                    "expression + the decoded change, decode(latent + vector) - decode(latent), so "
                    "what the decoder does not reconstruct of the cell is kept",
                    choices=("decoded", "residual"),
                    before="decoded",
                ),
            },
            epochs=100,
            batch_size=32,
            patience=25,
        ),
    ]
}


def get(name: str) -> ModelInfo:
    if name not in REGISTRY:
        raise ScwbError(f"Unknown model {name!r}; choose one of {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def for_task(task: str) -> list[ModelInfo]:
    return [m for m in REGISTRY.values() if m.task == task]


def _cast(info: ModelInfo, key: str, p: Param, value: Any) -> Any:
    try:
        if isinstance(p.default, bool):
            return str(value).lower() in ("1", "true", "yes")
        if isinstance(p.default, int):
            f = float(value)
            if not math.isfinite(f) or f != int(f):
                raise ValueError
            return int(f)
        if isinstance(p.default, float):
            f = float(value)
            if not math.isfinite(f):
                raise ScwbError(f"{info.name}: {key} must be a finite number, not {value!r}.")
            return f
        return str(value)
    except ScwbError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise ScwbError(
            f"{info.name}: {key} must be a {'whole number' if isinstance(p.default, int) else type(p.default).__name__}, not {value!r}."
        ) from None


def recorded_params(model: str, saved: Any) -> Any:
    """A saved run's parameters as it ran: a parameter added since it was saved takes the value
    the model used before (``Param.before``), not today's default, so reloading, reproducing or
    grouping an older run never silently changes what it was."""
    if not isinstance(model, str) or model not in REGISTRY or not isinstance(saved, dict):
        return saved
    info = REGISTRY[model]
    missing = {
        k: p.before for k, p in info.params.items() if k not in saved and p.before is not None
    }
    return {**saved, **missing} if missing else saved


def coerce_params(info: ModelInfo, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``given``, each cast to the default's type and range-checked;
    NaN and infinite values are refused."""
    out = info.defaults()
    for key, value in given.items():
        if key not in info.params:
            raise ScwbError(
                f"{info.name} has no parameter {key!r}; it takes {', '.join(info.params) or 'none'}."
            )
        p = info.params[key]
        value = _cast(info, key, p, value)
        if p.choices and value not in p.choices:
            raise ScwbError(
                f"{info.name}: {key} must be one of {', '.join(p.choices)}, not {value!r}."
            )
        if p.low is not None and value < p.low or p.high is not None and value > p.high:
            raise ScwbError(f"{info.name}: {key}={value} is out of range [{p.low}, {p.high}].")
        out[key] = value
    if "hidden" in out:
        _check_widths(info.name, "hidden", out["hidden"], allow_empty=True)
    if "widths" in out:
        _check_widths(info.name, "widths", out["widths"], allow_empty=False)
    return out


def _check_widths(model: str, key: str, text: str, allow_empty: bool) -> None:
    try:
        w = _widths(text)
    except (ValueError, OverflowError):
        raise ScwbError(
            f"{model}: {key} must be comma-separated integers like 64,32, not {text!r}."
        ) from None
    if (not w and not allow_empty) or any(v < 1 for v in w):
        raise ScwbError(f"{model}: {key} needs positive widths, not {text!r}.")
    if any(v > MAX_WIDTH for v in w) or len(w) > 20:
        raise ScwbError(f"{model}: {key}={text} is too large (at most 20 layers of {MAX_WIDTH}).")


def dense_layers(
    info: ModelInfo, params: dict[str, Any], n_in: int, n_out: int = 0, n_batch: int = 0
) -> list[tuple[int, int]]:
    """The (fan_in, fan_out) of every dense layer the network has: its size and FLOPs per cell
    follow without building it (torch-free, for preflight and time estimates)."""
    p = {**info.defaults(), **params}
    if info.name == "logreg":
        return [(n_in, 1 if n_out == 2 else max(n_out, 1))]
    if info.name == "mlp":
        widths = [n_in, *_widths(p["hidden"])]
        head = 1 if n_out == 2 else max(n_out, 1)
        return [*zip(widths[:-1], widths[1:], strict=True), (widths[-1], head)]
    if info.name == "autoencoder":
        w = [n_in, *_widths(p["widths"])]
        enc = list(zip(w[:-1], w[1:], strict=True))
        return enc + [(b, a) for a, b in reversed(enc)]
    if info.name in ("vae", "scgen"):
        h, n_lat, n_layers = int(p["n_hidden"]), int(p["n_latent"]), int(p["n_layers"])
        enc = [(n_in + n_batch, h)] + [(h, h)] * (n_layers - 1) + [(h, n_lat)] * 2
        dec = [(n_lat + n_batch, h)] + [(h, h)] * (n_layers - 1) + [(h, n_in)]
        if p.get("decoder") == "package":  # scGen package: one hidden layer fewer
            dec = (
                [(n_lat, n_in)]
                if n_layers == 1
                else [(n_lat, h)] + [(h, h)] * (n_layers - 2) + [(h, n_in)]
            )
        if p.get("likelihood") == "zinb":
            dec.append((h, n_in))
        return enc + dec
    if info.kind == "sklearn":
        k = int(p.get("n_components", 0)) or max(n_out, 1)
        return [(n_in, k)]
    return []


def n_parameters(info: ModelInfo, params: dict[str, Any], n_in: int, n_out: int = 0) -> int:
    return sum(a * b + b for a, b in dense_layers(info, params, n_in, n_out))


def builder(info: ModelInfo):
    """The function that builds ``info``'s network: ``f(n_in, params, dims) -> module``."""
    module, _, func = info.builder.partition(":")
    return getattr(importlib.import_module(module), func)


def build(info: ModelInfo, n_in: int, params: dict[str, Any], dims: dict[str, Any] | None = None):
    """The torch network (or scikit-learn baseline) for ``info``; ``dims`` holds what the data
    decides (number of classes, of batches, output activation), saved with the model."""
    return builder(info)(n_in, params, dict(dims or {}))
