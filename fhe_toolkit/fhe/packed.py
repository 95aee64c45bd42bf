"""The packed round on each side, over :mod:`fhe_toolkit.fhe.glwe`.

The fund encrypts the live rows' features once per round under one fresh key
(:func:`create_round_key`, :func:`encrypt_features`); every linear participant multiplies those
chunks by its own integer weights in worker processes (:class:`MultiplyTask`); the fund
decrypts each model's products with the round key (:func:`load_round_key`), and accepts them
only if they are exactly ``X · w`` for integer weights within the spec's bound over the
spec's features (:func:`verify_products`).

The round key lives in the key store under the round, in a folder no model name can take
(:data:`PACKED_KEYS`); it decrypts once per model, and is retired after the round's last
packed decryption (or when the round is resolved).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fhe_toolkit.data.schema import FEATURE_VALUES
from fhe_toolkit.errors import FundError, KeyStoreError, PackedError
from fhe_toolkit.fhe.engine import Blob, read_bytes
from fhe_toolkit.fhe.glwe import (
    CompressionKey,
    LinearVerifier,
    PackedParams,
    RoundKey,
    choose_params,
    encrypt_rows,
    multiply_chunk,
)
from fhe_toolkit.fhe.keystore import KeyStore
from fhe_toolkit.protocol.modelspec import LinearSpec

PACKED_KEYS = "_packed"
"""The key store's folder (beside the round's models) for the round's packed key."""
PARAMS_FILE = "packed_params.json"
CHUNK_ROWS = 256
"""Rows per encrypted chunk: the unit of work, checkpoint and decryption."""
PADDING_PREFIX = "fhe-toolkit-padding-"
"""Ids of the rows the fund adds to a round with fewer rows than features (never scored)."""
PADDING_MARGIN = 32
"""Rows beyond the feature count a packed round always has, so weights are pinned down."""


def round_params(n_features: int, specs: list[LinearSpec]) -> PackedParams:
    """Parameters for a round whose packed models are ``specs`` (bounded by the widest)."""
    return choose_params(n_features, max(spec.weight_bound for spec in specs))


def create_round_key(
    keys: KeyStore, round_id: str, params: PackedParams
) -> tuple[str, RoundKey, CompressionKey]:
    """A fresh round key in the key store (replacing one an interrupted opening left
    unpublished); returns its key-set id, the secret key and the public compression key."""
    key, compression_key = RoundKey.generate(params)
    key_set_id, _ = keys.store(
        round_id, PACKED_KEYS, key.to_bytes(), {PARAMS_FILE: params.to_json().encode()},
        replace_unpublished=True,
    )  # fmt: skip
    return key_set_id, key, compression_key


def padded(values: np.ndarray, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """The live rows, with rows the fund makes up mixed in when there are not more rows than
    features: the verifier can only pin a model's weights down (and refuse anything else) with
    more distinct rows than features. Encrypted, made-up rows look like live ones; their ids
    start with :data:`PADDING_PREFIX` and they are dropped before scoring."""
    missing = values.shape[1] + PADDING_MARGIN - len(values)
    if missing <= 0:
        return values, ids
    low, high = FEATURE_VALUES
    rng = np.random.default_rng(secrets.randbits(128))
    made_up = rng.integers(low, high + 1, size=(missing, values.shape[1]))
    order = rng.permutation(len(values) + missing)
    rows = np.vstack([values, made_up.astype(values.dtype)])[order]
    names = [*ids, *(f"{PADDING_PREFIX}{i}" for i in range(missing))]
    return rows, [names[i] for i in order]


def encrypt_features(
    key: RoundKey, features: np.ndarray, on_progress: Callable[[int, int], None]
) -> list[bytes]:
    """The live feature matrix (rows × columns, integers 0..4), in chunks of ``CHUNK_ROWS``."""
    matrix = np.ascontiguousarray(features, dtype=np.int64)
    chunks: list[bytes] = []
    for start in range(0, len(matrix), CHUNK_ROWS):
        chunks.extend(encrypt_rows(key, matrix[start : start + CHUNK_ROWS], chunk_rows=CHUNK_ROWS))
        on_progress(min(start + CHUNK_ROWS, len(matrix)), len(matrix))
    return chunks


def weight_vector(spec: LinearSpec, weights: np.ndarray, columns: list[str]) -> np.ndarray:
    """The model's weights laid over the round's encrypted ``columns`` (0 where unused)."""
    missing = [f for f in spec.features if f not in columns]
    if missing:
        raise PackedError(
            f"the round's packed features lack {missing[:5]}, which model {spec.name!r} uses."
        )
    vector = np.zeros(len(columns), dtype=np.int64)
    position = {name: i for i, name in enumerate(columns)}
    vector[[position[f] for f in spec.features]] = weights
    return vector


@dataclass(frozen=True)
class MultiplyTask:
    """The participant's work on one chunk: its weights times the encrypted features."""

    params_json: str
    compression_key: str | Path | Blob
    weights: tuple[int, ...]

    def portable(self) -> MultiplyTask:
        """This task with the compression key's bytes, for workers on other machines."""
        key = self.compression_key
        return replace(self, compression_key=key if isinstance(key, Blob) else Blob.of(key))

    def setup(self) -> Callable[[bytes], bytes]:
        params = PackedParams.from_json(self.params_json)
        key = CompressionKey.from_bytes(params, read_bytes(self.compression_key))
        weights = np.asarray(self.weights, dtype=np.int64).reshape(-1, 1)
        return lambda chunk: multiply_chunk(key, chunk, weights)


def load_round_key(keys: KeyStore, round_id: str) -> RoundKey:
    """The round's secret packed key, refused (by name) once retired."""
    try:
        secret = keys.secret(round_id, PACKED_KEYS)
    except KeyStoreError as exc:
        raise FundError(f"round {round_id!r}'s packed results cannot be decrypted: {exc}") from None
    params = PackedParams.from_json(
        (keys.directory(round_id, PACKED_KEYS) / PARAMS_FILE).read_text()
    )
    return RoundKey.from_bytes(params, secret)


def verify_products(features: np.ndarray, spec: LinearSpec, products: np.ndarray) -> np.ndarray:
    """The integer weights ``w`` (over ``spec.features``) with ``features · w == products`` on
    every row and ``|w| <= spec.weight_bound``; :class:`PackedError` if there are none.

    ``features``: the live rows' clear values of the spec's features, in its order.
    """
    verifier = _verifier(np.ascontiguousarray(features), spec.weight_bound)
    weights: np.ndarray = verifier.verify(np.asarray(products, dtype=np.int64).reshape(-1, 1))
    return weights.ravel()


_VERIFIERS: dict[tuple[Any, ...], LinearVerifier] = {}


def _verifier(features: np.ndarray, bound: int) -> LinearVerifier:
    """The verifier of these exact features and bound, kept for the next model that uses them:
    its factorization is most of a model's verification (seconds at Numerai's width), and a
    round's models mostly read the same features. One is kept (hundreds of MB at full width)."""
    key = (
        features.shape,
        features.dtype.str,
        bound,
        hashlib.sha256(np.ascontiguousarray(features).tobytes()).hexdigest(),
    )
    verifier = _VERIFIERS.get(key)
    if verifier is None:
        _VERIFIERS.clear()
        verifier = _VERIFIERS[key] = LinearVerifier(features.astype(np.int64), bound)
    return verifier


def load_weights(path: Path, spec: LinearSpec) -> np.ndarray:
    """A participant's private integer weights, checked against its spec."""
    try:
        values = json.loads(path.read_text())["weights"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PackedError(f"{path} is not a linear model's weights file: {exc}") from None
    weights: Any = np.asarray(values)
    if (
        weights.shape != (len(spec.features),)
        or weights.dtype.kind not in "iu"
        or np.any(np.abs(weights) > spec.weight_bound)
    ):
        raise PackedError(
            f"{path} must hold {len(spec.features)} integer weights within ±{spec.weight_bound} "
            f"(the spec's {spec.weight_bits}-bit bound); re-export the model."
        )
    return weights.astype(np.int64)
