"""Reading Numerai-format parquet files and ``features.json``, synthetic or real."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fhe_toolkit.data.schema import (
    DATA_TYPE,
    ERA,
    ID,
    feature_columns,
    target_columns,
    validate_tournament,
)
from fhe_toolkit.errors import DataValidationError
from fhe_toolkit.protocol.files import open_regular, read_regular

FEATURES_JSON = "features.json"
FEATURES_JSON_LIMIT = 64_000_000
"""Numerai's own features.json is about 1 MB."""


@dataclass(frozen=True)
class FeatureMetadata:
    """What ``features.json`` says: named feature sets and the target names."""

    feature_sets: dict[str, list[str]]
    targets: list[str] = field(default_factory=list)

    def features(self, feature_set: str) -> list[str]:
        """The feature names of one set, e.g. ``"small"``, ``"medium"`` or ``"all"``."""
        try:
            return list(self.feature_sets[feature_set])
        except KeyError:
            raise DataValidationError(
                f"feature set {feature_set!r} is not in features.json; it has "
                f"{sorted(self.feature_sets)}."
            ) from None

    def to_json(self) -> dict[str, object]:
        return {"feature_sets": self.feature_sets, "targets": self.targets}


def load_features_json(path: str | Path) -> FeatureMetadata:
    """Read and check a Numerai ``features.json`` (keys ``feature_sets`` and ``targets``)."""
    path = Path(path)
    text = read_regular(path, FEATURES_JSON_LIMIT, "a features.json", DataValidationError)
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataValidationError(f"{path} is not valid JSON ({exc}).") from None
    sets = raw.get("feature_sets") if isinstance(raw, dict) else None
    if not isinstance(sets, dict) or not all(
        isinstance(v, list) and all(isinstance(f, str) for f in v) for v in sets.values()
    ):
        raise DataValidationError(
            f"{path} needs a 'feature_sets' object mapping set names to lists of feature names."
        )
    targets = raw.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise DataValidationError(f"{path}: 'targets' must be a list of target column names.")
    return FeatureMetadata(feature_sets={k: list(v) for k, v in sets.items()}, targets=targets)


def load_tournament(
    path: str | Path,
    *,
    feature_set: str | None = None,
    features_json: str | Path | None = None,
    features: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    validate: bool = True,
) -> pd.DataFrame:
    """Load a Numerai-format parquet file, reading only the columns asked for.

    Arguments:
        path: a parquet file (``train.parquet``, ``validation.parquet``, ``live.parquet``, ...).
        feature_set: a set named in ``features.json`` (``small`` / ``medium`` / ``all``).
        features_json: where that file is (default: beside ``path``).
        features: explicit feature columns instead of a set (default: every ``feature_*``).
        targets: target columns to read (default: every ``target*`` column in the file).
        validate: check the format (:func:`validate_tournament`) before returning.

    Returns a DataFrame indexed by ``id`` with ``era``, ``data_type`` when present, the features
    and the targets.
    """
    path = Path(path)
    # One open file for the schema and the rows: a link, FIFO or device is refused before
    # pyarrow sees it (a FIFO would block it), and the file cannot be swapped in between.
    with open_regular(path, "a Numerai-format parquet file", DataValidationError) as (handle, _):
        schema = _parquet_schema(handle, path)
        available = list(schema.names)
        if feature_set is not None:
            if features is not None:
                raise DataValidationError("give either feature_set or features, not both.")
            metadata = load_features_json(features_json or path.with_name(FEATURES_JSON))
            features = metadata.features(feature_set)
        chosen_features = feature_columns(available) if features is None else list(features)
        chosen_targets = target_columns(available) if targets is None else list(targets)
        wanted = [ERA, DATA_TYPE, *chosen_features, *chosen_targets]
        absent = [c for c in [*chosen_features, *chosen_targets] if c not in available]
        if absent:
            raise DataValidationError(
                f"{path} has no column(s) {absent[:5]}"
                + (f" (and {len(absent) - 5} more)" if len(absent) > 5 else "")
                + "; check the feature set / target names against the file."
            )
        index_cols = [c for c in (ID, "__index_level_0__") if c in available]
        columns = [c for c in dict.fromkeys(wanted) if c in available] + index_cols
        try:
            df = pd.read_parquet(handle, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise DataValidationError(f"{path} could not be read as parquet: {exc}") from None
    if ID in df.columns:
        df = df.set_index(ID)
    if validate:
        validate_tournament(df, features=chosen_features, targets=chosen_targets, source=str(path))
    return df


def parquet_columns(path: str | Path) -> list[str]:
    """The column names of a parquet file, read from its schema (no rows)."""
    path = Path(path)
    with open_regular(path, "a parquet file", DataValidationError) as (handle, _):
        return list(_parquet_schema(handle, path).names)


def _parquet_schema(handle: BinaryIO, path: Path) -> pa.Schema:
    try:
        return pq.read_schema(handle)
    except (OSError, pa.ArrowException) as exc:
        raise DataValidationError(
            f"{path} is not a readable parquet file ({exc}); Numerai data comes as parquet."
        ) from None
