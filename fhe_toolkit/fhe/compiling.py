"""Compiling a Concrete ML model for the toolkit, and its three kinds of local predictions.

``compile_for_batches`` compiles the model's own inference function for ``batch_size`` rows per
circuit call. Concrete ML's ``compile`` always traces one row; for linear circuits, whose cost
per row is mostly per-call overhead, a batch of rows per call is cheaper (see families.py).
It uses Concrete ML 1.9.0's ``_get_module_to_compile``, the same call ``compile`` makes, pinned
by the version check in the model spec.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhe_toolkit.protocol.families import Family, post_process


def calibration_rows(model: Any, sample: np.ndarray) -> np.ndarray:
    """``sample`` plus the rows that push the circuit's integers to their extremes.

    Concrete sizes the circuit's integers from the values seen while compiling: a tree compiled
    on a sample where a feature never reaches 4 gets an input type too narrow for a 4, and the
    fund's encryption of such a live row fails. Quantization clips every input to its
    quantizer's range (calibrated on all the training data), so the corners of that box cover
    every row the circuit can receive: all-min, all-max, and for linear models, max where a
    weight is positive and min where it is negative (and the reverse), which bound the
    accumulator exactly.
    """
    low, high = _input_bounds(model, sample)
    rows = [low, high]
    coefficients = getattr(getattr(model, "sklearn_model", None), "coef_", None)
    if coefficients is not None:
        for weights in np.atleast_2d(coefficients):
            rows += [np.where(weights > 0, high, low), np.where(weights > 0, low, high)]
    return np.vstack([sample, *rows]).astype(np.float32)


def _input_bounds(model: Any, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (min, max): the input quantizers' ranges, widened to the sample's."""
    low, high = sample.min(axis=0), sample.max(axis=0)
    ranges = [(q.rmin, q.rmax) for q in getattr(model, "input_quantizers", None) or []]
    if ranges and all(lo is not None and hi is not None for lo, hi in ranges):
        if len(ranges) in (1, sample.shape[1]):
            bounds = np.broadcast_to(np.asarray(ranges, dtype=np.float64), (sample.shape[1], 2))
            low, high = np.minimum(low, bounds[:, 0]), np.maximum(high, bounds[:, 1])
    return low, high


def compile_for_batches(model: Any, sample: np.ndarray, batch_size: int) -> None:
    """Compile ``model`` for encrypted inputs of ``batch_size`` rows (in place), calibrated on
    ``sample`` and its extreme rows (:func:`calibration_rows`)."""
    sample = calibration_rows(model, np.asarray(sample, dtype=np.float32))
    if batch_size == 1:
        model.compile(sample)
        return
    from concrete.ml.common.utils import CiphertextFormat

    quantized = model.quantize_input(sample)
    repeats = -(-batch_size // len(quantized))
    quantized = np.concatenate([quantized] * max(repeats, 1))
    inputset = [
        quantized[start : start + batch_size]
        for start in range(0, len(quantized) - batch_size + 1, batch_size)
    ]
    model.fhe_circuit_ = model._get_module_to_compile().compile(
        inputset,
        single_precision=False,
        compress_input_ciphertexts=True,
        compress_evaluation_keys=True,
    )
    model._is_compiled = True
    model.ciphertext_format = CiphertextFormat.CONCRETE


def predict_clear(model: Any, family: Family, features: np.ndarray) -> np.ndarray:
    """The float model's predictions, before any output quantization.

    Tree models are fit by Concrete ML on quantized inputs, so they see those here too (with 3
    input bits that loses nothing on 0..4 features). A quantization-aware network has no float
    twin: its clear predictions are the quantized ones.
    """
    features = np.asarray(features, dtype=np.float32)
    if family.estimator == "NeuralNetRegressor":
        return predict_quantized(model, family, features)
    if family.post_processing.startswith("sum_trees"):
        return np.asarray(model.sklearn_model.predict(model.quantize_input(features))).ravel()
    if family.task == "classification":
        return np.asarray(model.sklearn_model.predict_proba(features))[:, 1]
    return np.asarray(model.sklearn_model.predict(features)).ravel()


def predict_quantized(model: Any, family: Family, features: np.ndarray) -> np.ndarray:
    """The quantized model run in the clear: what FHE execution decrypts to."""
    features = np.asarray(features, dtype=np.float32)
    if family.task == "classification":
        return np.asarray(model.predict_proba(features, fhe="disable"))[:, 1]
    return np.asarray(model.predict(features, fhe="disable"), dtype=np.float64).ravel()


def predict_simulated(
    model: Any, family: Family, features: np.ndarray, batch_size: int
) -> np.ndarray:
    """The compiled circuit in Concrete's simulation (no encryption, same integer arithmetic)."""
    quantized = model.quantize_input(np.asarray(features, dtype=np.float32))
    padding = (-len(quantized)) % batch_size
    padded = np.concatenate([quantized, np.zeros((padding, *quantized.shape[1:]), quantized.dtype)])
    outputs = [
        model.fhe_circuit.simulate(padded[start : start + batch_size])
        for start in range(0, len(padded), batch_size)
    ]
    decoded = np.concatenate(outputs)[: len(quantized)]
    return post_process(family, model.dequantize_output(decoded))
