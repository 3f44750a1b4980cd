"""The model registry: name -> task, the input it needs, defaults with help text, and a builder.

Adding a model is one entry here and one module beside this file.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: str
    title: str
    doc: str
    needs: str = "any"  # 'any' | 'counts' (raw integer counts) | 'lognorm'
    kind: str = "torch"  # 'torch' | 'sklearn'
    baseline: bool = False
    params: dict[str, Param] = field(default_factory=dict)
    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 10

    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}


def _widths(text: Any) -> tuple[int, ...]:
    if isinstance(text, (list, tuple)):
        return tuple(int(v) for v in text)
    parts = [p for p in str(text).replace(" ", "").split(",") if p]
    return tuple(int(p) for p in parts)


ACTIVATION = Param("relu", "hidden activation", choices=("relu", "sigmoid", "tanh"))

REGISTRY: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        ModelInfo(
            "logreg",
            "classify",
            "Logistic regression (torch)",
            "One linear layer; softmax + cross-entropy (sigmoid + BCE for two classes), Adam.",
            params={"weight_decay": Param(0.0, "L2 penalty on the weights", low=0)},
            epochs=50,
            lr=1e-2,
        ),
        ModelInfo(
            "mlp",
            "classify",
            "MLP classifier",
            "Fully connected hidden layers (default one of 50) with a chosen activation and dropout.",
            params={
                "hidden": Param("50", "hidden layer widths, comma-separated"),
                "activation": ACTIVATION,
                "dropout": Param(0.1, "dropout after each hidden layer", low=0, high=0.9),
                "weight_decay": Param(0.0, "L2 penalty on the weights", low=0),
            },
            epochs=50,
        ),
        ModelInfo(
            "sk_logreg",
            "classify",
            "Baseline: scikit-learn LogisticRegression",
            "sklearn LogisticRegression (lbfgs, L2) on the same training cells.",
            kind="sklearn",
            baseline=True,
            params={
                "C": Param(1.0, "inverse regularisation strength", low=1e-6),
                "max_iter": Param(1000, "solver iterations", low=1),
            },
        ),
        ModelInfo(
            "autoencoder",
            "reconstruct",
            "Autoencoder (scQUEST)",
            "Encoder n_in->32->16->8->4 mirrored; MSE; per-cell reconstruction error = abnormality.",
            params={
                "widths": Param("32,16,8,4", "encoder widths, the last is the latent size"),
                "activation": ACTIVATION,
                "output": Param(
                    "auto",
                    "sigmoid output for MinMax-scaled input",
                    choices=("auto", "sigmoid", "linear"),
                ),
            },
            epochs=50,
        ),
        ModelInfo(
            "pca",
            "reconstruct",
            "Baseline: PCA",
            "sklearn PCA with the same latent size; reconstruction = inverse transform.",
            kind="sklearn",
            baseline=True,
            params={
                "n_components": Param(
                    4, "number of components (match the network's latent size)", low=1
                )
            },
        ),
        ModelInfo(
            "vae",
            "embed",
            "VAE on counts (scVI-style)",
            "Library-size aware VAE with NB (default), ZINB or Gaussian likelihood; optional batch covariate.",
            needs="counts",
            params={
                "n_hidden": Param(128, "hidden units per layer", low=1),
                "n_latent": Param(10, "latent dimensions", low=1),
                "n_layers": Param(1, "hidden layers", low=1, high=5),
                "dropout": Param(0.1, "encoder dropout", low=0, high=0.9),
                "likelihood": Param(
                    "nb",
                    "count model (gaussian for normalised data)",
                    choices=("nb", "zinb", "gaussian"),
                ),
                "batch_key": Param("", "obs column with the batch (optional)"),
                "kl_warmup": Param(20, "epochs over which the KL weight rises to 1", low=0),
            },
            epochs=100,
        ),
        ModelInfo(
            "pca_embed",
            "embed",
            "Baseline: PCA embedding",
            "sklearn PCA on log-normalised counts with the VAE's latent size.",
            kind="sklearn",
            baseline=True,
            params={"n_components": Param(10, "number of components", low=1)},
        ),
        ModelInfo(
            "scgen",
            "perturb",
            "scGen (VAE + latent arithmetic)",
            "VAE on log-normalised expression (2x800, BatchNorm, LeakyReLU, dropout 0.2, latent 100, KL 5e-5); "
            "prediction = decode(latent of control cells + stimulation vector).",
            needs="lognorm",
            params={
                "n_hidden": Param(800, "hidden units per layer", low=1),
                "n_layers": Param(2, "hidden layers", low=1, high=5),
                "n_latent": Param(100, "latent dimensions", low=1),
                "dropout": Param(0.2, "dropout", low=0, high=0.9),
                "kl_weight": Param(5e-5, "weight of the KL term", low=0),
                "delta_cell_types": Param(
                    "",
                    "cell types the stimulation vector is computed from (empty: all training types)",
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


def coerce_params(info: ModelInfo, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``given``, each cast to the default's type and range-checked."""
    out = info.defaults()
    for key, value in given.items():
        if key not in info.params:
            raise ScwbError(
                f"{info.name} has no parameter {key!r}; it takes {', '.join(info.params) or 'none'}."
            )
        p = info.params[key]
        try:
            if isinstance(p.default, bool):
                value = str(value).lower() in ("1", "true", "yes")
            elif isinstance(p.default, int):
                value = int(float(value))
            elif isinstance(p.default, float):
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise ScwbError(
                f"{info.name}: {key} must be a {type(p.default).__name__}, not {value!r}."
            ) from None
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
    except ValueError:
        raise ScwbError(
            f"{model}: {key} must be comma-separated integers like 64,32, not {text!r}."
        ) from None
    if (not w and not allow_empty) or any(v < 1 for v in w):
        raise ScwbError(f"{model}: {key} needs positive widths, not {text!r}.")


def build(
    info: ModelInfo,
    n_in: int,
    params: dict[str, Any],
    n_classes: int = 0,
    n_batch: int = 0,
    sigmoid_output: bool = False,
):
    """The torch network (or sklearn baseline) for ``info`` with ``params``."""
    if info.name == "logreg":
        from engine.models.classifier import Classifier

        return Classifier(n_in, n_classes)
    if info.name == "mlp":
        from engine.models.classifier import Classifier

        return Classifier(
            n_in, n_classes, _widths(params["hidden"]), params["activation"], params["dropout"]
        )
    if info.name == "autoencoder":
        from engine.models.autoencoder import Autoencoder

        return Autoencoder(n_in, _widths(params["widths"]), params["activation"], sigmoid_output)
    if info.name == "vae":
        from engine.models.vae import VAE

        return VAE(
            n_in,
            params["n_hidden"],
            params["n_latent"],
            params["n_layers"],
            params["dropout"],
            params["likelihood"],
            n_batch,
        )
    if info.name == "scgen":
        from engine.models.scgen import SCGEN

        return SCGEN(
            n_in,
            params["n_hidden"],
            params["n_layers"],
            params["n_latent"],
            params["dropout"],
            params["kl_weight"],
        )
    raise ScwbError(f"{info.name} is not a torch model.")
