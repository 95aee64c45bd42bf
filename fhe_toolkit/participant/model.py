"""The participant's model: train a quantized model, check it, compile it, export its public spec.

A participant's model directory::

    model_dir/
      model_spec.json   public: send it to the fund to register
      deployment/       private: client.zip and server.zip (the weights, in clear MLIR), and
                        server_library/ (server.zip compiled for this machine, for the runner)
      training.json     what was trained, on what, with which settings
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from fhe_toolkit.data.schema import ERA
from fhe_toolkit.errors import ParticipantError
from fhe_toolkit.fhe.codecs import LinearCodec, quantize_weights
from fhe_toolkit.fhe.compiling import (
    compile_for_batches,
    predict_clear,
    predict_quantized,
    predict_simulated,
)
from fhe_toolkit.fhe.server_library import SERVER_ZIP, ensure_server_library
from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.protocol.families import Family, get_family
from fhe_toolkit.protocol.files import write_atomic
from fhe_toolkit.protocol.manifest import utc_now
from fhe_toolkit.protocol.modelspec import (
    AnyModelSpec,
    LinearSpec,
    ModelSpec,
    Neutralization,
    QuantizerSpec,
    load_spec,
    problems_of,
)
from fhe_toolkit.scoring import neutralize_for_scoring, score_eras, summarize

SPEC_FILE = "model_spec.json"
DEPLOYMENT_DIR = "deployment"
TRAINING_FILE = "training.json"
WEIGHTS_FILE = "linear_weights.json"
"""A packed model's private integer weights, in its deployment directory."""
DEFAULT_WEIGHT_BITS = 8
NEUTRALIZED_MODE = "neutralized"
""":func:`diagnose`'s row for the predictions after the spec's declared neutralization."""


@dataclass
class TrainedModel:
    """A fitted Concrete ML model with what it was trained on.

    ``packed``: a linear model that runs on the round's packed encryption of the live features
    (the default for the linear families): its quantized form is integer weights of
    ``weight_bits`` bits times the features' own integer values, with nothing to compile.
    Otherwise the model is compiled into a circuit of its own.
    """

    family: Family
    features: list[str]
    target: str
    estimator: Any
    params: dict[str, Any] = field(default_factory=dict)
    packed: bool = False

    def predict(self, data: pd.DataFrame, mode: str = "quantized") -> pd.Series:
        """Predictions by id: ``clear`` (float model), ``quantized`` (what the fund decrypts and
        decodes) or ``simulated`` (the compiled circuit in Concrete's simulation; for a packed
        model, the same integer arithmetic as ``quantized``, which is exact)."""
        x = _features(data, self.features)
        if mode == "clear":
            values = predict_clear(self.estimator, self.family, x)
        elif mode in ("quantized", "simulated") and self.packed:
            weights, spec = self.linear_parts("preview")
            values = LinearCodec(spec).decode(np.rint(x).astype(np.int64) @ weights)
        elif mode == "quantized":
            values = predict_quantized(self.estimator, self.family, x)
        elif mode == "simulated":
            if not self.is_compiled:
                raise ParticipantError("compile the model first (compile_model) to simulate it.")
            values = predict_simulated(self.estimator, self.family, x, self.family.batch_size)
        else:
            raise ParticipantError(f"mode must be clear, quantized or simulated, not {mode!r}.")
        return pd.Series(values, index=data.index, name=mode)

    @property
    def is_compiled(self) -> bool:
        """Ready to export: a packed model always is (it has no circuit)."""
        return self.packed or bool(getattr(self.estimator, "_is_compiled", False))

    def linear_parts(
        self, name: str, neutralization: Neutralization | None = None
    ) -> tuple[np.ndarray, LinearSpec]:
        """A packed model's private integer weights and its public spec under ``name``."""
        float_model = self.estimator.sklearn_model
        coef = np.asarray(float_model.coef_, dtype=np.float64).ravel()
        intercept = float(np.asarray(float_model.intercept_, dtype=np.float64).ravel()[0])
        weight_bits = int(self.params.get("n_bits", DEFAULT_WEIGHT_BITS))
        weights, scale = quantize_weights(coef, weight_bits)
        spec = LinearSpec(
            name=name,
            family=self.family.name,
            target=self.target,
            features=self.features,
            weight_bits=weight_bits,
            scale=scale,
            intercept=intercept,
            versions=package_versions(),
            neutralization=neutralization,
        )
        return weights, spec


def train_model(
    data: pd.DataFrame,
    *,
    family: str,
    features: Sequence[str],
    target: str = "target",
    params: dict[str, Any] | None = None,
    seed: int = 0,
    packed: bool | None = None,
) -> TrainedModel:
    """Fit a Concrete ML model of ``family`` on the training rows.

    ``packed``: run on the round's packed encryption (default: yes for the linear families,
    which are the only ones that can; ``False`` compiles a linear model into its own circuit).

    ``params`` override the family's defaults (see :data:`fhe_toolkit.protocol.families.FAMILIES`).
    Classification families learn whether the target is above its median bucket (0.5); the
    neural net learns the target as buckets -2..2 (scores are rank-based, so this changes none).
    Rows with a NaN target are left out.
    """
    info = get_family(family)
    if packed and not info.packable:
        raise ParticipantError(
            f"only the linear families run packed, not {family!r}; leave packed unset for it."
        )
    features = list(features)
    missing = [c for c in [*features, target] if c not in data.columns]
    if missing:
        raise ParticipantError(f"training data has no column(s) {missing[:5]}.")
    rows = data[data[target].notna()]
    if len(rows) < 20:
        raise ParticipantError(f"only {len(rows)} training rows have a {target!r} value.")
    import concrete.ml.sklearn as cml

    settings = {**info.defaults, **(params or {})}
    if info.estimator not in ("LinearRegression", "NeuralNetRegressor"):
        settings.setdefault("random_state", seed)
    if info.estimator == "NeuralNetRegressor":
        import torch

        torch.manual_seed(seed)
    try:
        estimator = getattr(cml, info.estimator)(**settings)
    except TypeError as exc:
        raise ParticipantError(f"bad parameter for {info.estimator}: {exc}") from None
    x = _features(rows, features)
    y = rows[target].to_numpy(np.float32)
    if info.task == "classification":
        y = (y > 0.5).astype(np.int64)
    elif info.estimator == "NeuralNetRegressor":
        # Buckets -2..2: a 0..1 target around 0.5 falls within one level of the output quantizer.
        y = ((y - 0.5) * 4).reshape(-1, 1)
    estimator.fit(x, y)
    packed = info.packable if packed is None else packed
    return TrainedModel(info, features, target, estimator, settings, packed=packed)


def compile_model(model: TrainedModel, sample: pd.DataFrame, max_rows: int = 1000) -> None:
    """Compile for FHE, calibrating on up to ``max_rows`` rows of ``sample`` (nothing to do for a
    packed model: it runs on the round's packed encryption, with no circuit of its own)."""
    if model.packed:
        return
    x = _features(sample.iloc[:max_rows], model.features)
    compile_for_batches(model.estimator, x, model.family.batch_size)


def diagnose(
    model: TrainedModel,
    validation: pd.DataFrame,
    *,
    benchmark: pd.Series | None = None,
    modes: Sequence[str] = ("clear", "quantized", "simulated"),
    exposure_features: Sequence[str] | None = None,
    neutralization: Neutralization | None = None,
) -> pd.DataFrame:
    """Score the model on validation eras in each mode, so the quantization loss is visible.

    Returns per (mode, metric) the mean, std, Sharpe and max drawdown over eras: CORR, BMC
    (when a benchmark is given), FNC and feature exposure, with the shared scoring modules.

    ``neutralization``: what the model's spec declares. One more mode, ``neutralized``, is then
    the last of ``modes`` (by default the simulated FHE predictions: what the fund decrypts)
    neutralized as the fund will neutralize the live predictions: era by era, against the
    declared features of ``validation``.
    """
    rows = validation[validation[model.target].notna()]
    predictions = pd.DataFrame({mode: model.predict(rows, mode) for mode in modes})
    if neutralization is not None:
        against = neutralization.neutralizers(model.features, list(rows.columns))
        last = predictions.columns[-1]
        predictions[NEUTRALIZED_MODE] = neutralize_for_scoring(
            predictions[[last]], rows[against], neutralization.proportion, eras=rows[ERA]
        )[last]
    per_era = score_eras(
        predictions,
        rows,
        target=model.target,
        benchmark=benchmark,
        exposure_features=list(exposure_features or model.features),
        fnc_features=list(exposure_features or model.features),
    )
    return summarize(per_era).rename_axis(["mode", "metric"])


def new_deployment(out: Path, what: str) -> Path:
    """``out``'s deployment folder, refused if it holds ``what`` already: keys the fund issued
    for an earlier compilation would not fit a new one."""
    deployment = out / DEPLOYMENT_DIR
    if deployment.exists() and any(deployment.iterdir()):
        raise ParticipantError(
            f"{deployment} already holds {what}; use a new directory (keys issued for the old "
            "one would not fit a new compilation)."
        )
    return deployment


def export_model(
    model: TrainedModel,
    out_dir: str | Path,
    name: str,
    *,
    neutralization: Neutralization | None = None,
) -> AnyModelSpec:
    """Write the deployment (private) and the public model spec into ``out_dir``.

    A circuit model must be compiled; a packed model's deployment is its integer weights.
    ``neutralization``: declared in the spec, the fund applies it to the decrypted predictions
    before scoring them (see :class:`~fhe_toolkit.protocol.modelspec.Neutralization`).
    Refuses to overwrite an existing model directory's deployment.
    """
    if not model.is_compiled:
        raise ParticipantError("compile the model (compile_model) before exporting it.")
    out = Path(out_dir)
    deployment = new_deployment(out, "a compiled model")
    spec = (
        _export_packed(model, deployment, name, neutralization)
        if model.packed
        else _export_circuit(model, deployment, name, neutralization)
    )
    (out / SPEC_FILE).write_text(spec.to_json())
    (out / TRAINING_FILE).write_text(
        json.dumps(
            {
                "family": model.family.name,
                "estimator": model.family.estimator,
                "packed": model.packed,
                "params": {k: _jsonable(v) for k, v in model.params.items()},
                "features": model.features,
                "target": model.target,
                "exported_at": utc_now(),
            },
            indent=1,
        )
    )
    return spec


def _export_packed(
    model: TrainedModel, deployment: Path, name: str, neutralization: Neutralization | None
) -> LinearSpec:
    weights, spec = model.linear_parts(name, neutralization)
    deployment.mkdir(parents=True, exist_ok=True)
    write_atomic(
        deployment / WEIGHTS_FILE, json.dumps({"weights": weights.tolist()}).encode(), mode=0o600
    )
    return spec


def _export_circuit(
    model: TrainedModel, deployment: Path, name: str, neutralization: Neutralization | None
) -> ModelSpec:
    from concrete.ml.deployment import FHEModelDev

    estimator = model.estimator
    try:
        spec = ModelSpec(
            name=name,
            family=model.family.name,
            target=model.target,
            features=model.features,
            batch_size=model.family.batch_size,
            input_quantizers=[QuantizerSpec.from_quantizer(q) for q in estimator.input_quantizers],
            output_quantizer=QuantizerSpec.from_quantizer(estimator.output_quantizers[0]),
            client_specs=json.loads(estimator.fhe_circuit.client.specs.serialize()),
            versions=package_versions(),
            neutralization=neutralization,
        )
    except ValidationError as exc:
        raise ParticipantError(
            f"this model's spec is outside what the fund accepts: {problems_of(exc)}. Use the "
            "family's default settings (e.g. n_bits of at most 16)."
        ) from None
    deployment.parent.mkdir(parents=True, exist_ok=True)
    FHEModelDev(str(deployment), estimator).save()
    ensure_server_library(deployment, estimator.fhe_circuit.server)
    return spec


def load_model_dir(model_dir: str | Path) -> tuple[AnyModelSpec, Path]:
    """The spec and deployment directory of an exported model, checked to belong together."""
    root = Path(model_dir)
    spec = load_spec(root / SPEC_FILE)
    deployment = root / DEPLOYMENT_DIR
    needed = WEIGHTS_FILE if isinstance(spec, LinearSpec) else SERVER_ZIP
    if not (deployment / needed).is_file():
        raise ParticipantError(
            f"{deployment / needed} is missing: {root} is not an exported model directory "
            "(see `fhe-toolkit participant train`)."
        )
    return spec, deployment


def _features(data: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    missing = [c for c in features if c not in data.columns]
    if missing:
        raise ParticipantError(
            f"data has no column(s) {missing[:5]} that the model uses; load it with the same "
            "feature set the model was trained on."
        )
    return data[list(features)].to_numpy(np.float32)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
