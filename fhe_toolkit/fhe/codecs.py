"""Specs turned into arithmetic: quantize what the fund encrypts, decode what it decrypts.

The specs (:mod:`fhe_toolkit.protocol`) are plain data; here they become Concrete ML quantizers,
with Concrete ML's own arithmetic, so the fund's integers are exactly the participant's. Decoding
repeats Concrete ML's dequantization in NumPy (:func:`dequantize`), so that receiving
submissions does not import Concrete ML.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from fhe_toolkit.errors import SpecError
from fhe_toolkit.protocol.families import post_process
from fhe_toolkit.protocol.modelspec import LinearSpec, ModelSpec, QuantizerSpec
from fhe_toolkit.protocol.training_spec import TrainingSpec


def build_quantizer(spec: QuantizerSpec) -> Any:
    """A Concrete ML ``UniformQuantizer`` with ``spec``'s parameters (no decoding of objects)."""
    from concrete.ml.quantization.quantizers import UniformQuantizer

    values = spec.model_dump()
    values["scale"] = _scale(spec)
    values["zero_point"] = (
        np.asarray(spec.zero_point, dtype=np.float64)
        if isinstance(spec.zero_point, list)
        else spec.zero_point
    )
    return UniformQuantizer.load_dict({k: v for k, v in values.items() if v is not None})


def dequantize(spec: QuantizerSpec, values: np.ndarray) -> np.ndarray:
    """Concrete ML 1.9.0's ``UniformQuantizer.dequant`` with ``spec``'s parameters:
    ``scale · (q − zero_point)`` in float64, the same operations in the same order, so the
    result is Concrete ML's bit for bit (tested against it). Written out because decoding a
    decrypted submission must not import Concrete ML (and torch): seconds per receiving process.
    """
    return _scale(spec) * (np.asarray(values) - np.asarray(spec.zero_point, dtype=np.float64))


def _scale(spec: QuantizerSpec) -> Any:
    """The scale as Concrete ML's quantizers hold it: float64, an array when per channel."""
    if isinstance(spec.scale, list):
        return np.asarray(spec.scale, dtype=np.float64)
    return np.float64(spec.scale)


class SpecCodec:
    """The fund's side of a spec: quantize feature rows, decode decrypted outputs.

    Only quantizing (opening a round) builds Concrete ML's quantizers; decoding needs no
    Concrete ML (:func:`dequantize`).
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.family = spec.family_info

    @functools.cached_property
    def input_quantizers(self) -> list[Any]:
        return [build_quantizer(q) for q in self.spec.input_quantizers]

    def quantize(self, features: np.ndarray) -> np.ndarray:
        """Feature rows (n × n_features) to the circuit's integers, as Concrete ML does.

        The rows are taken as float32, the dtype the participant's model was fit and checked on:
        with NumPy 1.x promotion the quantizer's arithmetic then runs in float32, and values that
        fall on a rounding tie (2 on a 0..4 range at 8 bits) round as they did for the model.
        """
        values = np.asarray(features, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != len(self.spec.features):
            raise SpecError(
                f"expected rows of {len(self.spec.features)} features, got shape {values.shape}."
            )
        if len(self.input_quantizers) == 1:
            return self.input_quantizers[0].quant(values)
        return np.column_stack(
            [q.quant(values[:, i]) for i, q in enumerate(self.input_quantizers)]
        ).astype(np.int64)

    def decode(self, decrypted: np.ndarray) -> np.ndarray:
        """Decrypted integers (rows × outputs) to one prediction per row."""
        return post_process(self.family, dequantize(self.spec.output_quantizer, decrypted))


class TrainingCodec:
    """The fund's side of a training spec: quantize batches and weights, decode the result."""

    def __init__(self, spec: TrainingSpec) -> None:
        self.spec = spec
        self.x, self.y, self.weights, self.bias = (
            build_quantizer(q) for q in spec.input_quantizers
        )

    def quantize_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b, n = self.spec.batch_size, len(self.spec.features)
        return (
            self.x.quant(np.asarray(x, dtype=np.float64).reshape(1, b, n)),
            self.y.quant(np.asarray(y, dtype=np.float64).reshape(1, b, 1)),
        )

    def quantize_parameters(
        self, weights: np.ndarray, bias: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.weights.quant(weights), self.bias.quant(bias)

    def decode(self, weights: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, float]:
        """Decrypted integers to the trained coefficients (one per feature) and intercept."""
        out_weights, out_bias = self.spec.output_quantizers
        coef = np.asarray(dequantize(out_weights, weights), dtype=np.float64)
        intercept = np.asarray(dequantize(out_bias, bias), dtype=np.float64)
        return coef.reshape(-1), float(intercept.reshape(-1)[0])


def plan_batches(
    spec: TrainingSpec, n_samples: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Initial weights and bias, and the row indices of every iteration's batch.

    The draws follow Concrete ML 1.9's ``SGDClassifier._fit_encrypted`` with
    ``random_state=seed``: one generator, the weights uniform in ``parameter_range``, then the
    bias (zero without an intercept, and then not drawn), then per iteration ``batch_size`` rows
    without replacement.
    """
    rng = np.random.default_rng(spec.seed)
    low, high = spec.parameter_range
    n = len(spec.features)
    weights = rng.uniform(low=low, high=high, size=(1, n, 1))
    bias = (
        rng.uniform(low=low, high=high, size=(1, 1, 1))
        if spec.fit_intercept
        else np.zeros((1, 1, 1))
    )
    batches = [
        rng.choice(n_samples, size=spec.batch_size, replace=False)
        for _ in range(spec.iteration_count(n_samples))
    ]
    return weights, bias, batches


class LinearCodec:
    """A packed linear model's arithmetic, shared by both sides so they agree exactly: the
    participant's quantized predictions are the fund's decoded decryptions.

    A prediction is ``post_process(scale · (x · w) + intercept)`` for integer weights ``w``.
    """

    def __init__(self, spec: LinearSpec) -> None:
        self.spec = spec
        self.family = spec.family_info

    def decode(self, products: np.ndarray) -> np.ndarray:
        """Integer products ``x · w`` (one per row) to predictions."""
        values = self.spec.scale * np.asarray(products, dtype=np.float64).reshape(-1, 1)
        return post_process(self.family, values + self.spec.intercept)


def quantize_weights(coef: np.ndarray, weight_bits: int) -> tuple[np.ndarray, float]:
    """Float coefficients to signed integers of ``weight_bits`` bits and their scale: the
    largest ``|coef|`` maps to the largest integer, so no weight is clipped."""
    values = np.asarray(coef, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)):
        raise SpecError("the model's coefficients are not all finite; it cannot be packed.")
    bound = 2 ** (weight_bits - 1) - 1
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    scale = largest / bound if largest > 0 else 1.0
    return np.rint(values / scale).astype(np.int64), scale
