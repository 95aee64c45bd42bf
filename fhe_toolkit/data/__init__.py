"""Numerai-format tournament data: loading, validation, splitting by era, and a
synthetic generator."""

from fhe_toolkit.data.io import FeatureMetadata, load_features_json, load_tournament
from fhe_toolkit.data.schema import feature_columns, target_columns, validate_tournament
from fhe_toolkit.data.split import EraFile, split_eras
from fhe_toolkit.data.synth import SynthConfig, iter_eras, make_tournament, synthesize

__all__ = [
    "EraFile",
    "FeatureMetadata",
    "SynthConfig",
    "feature_columns",
    "iter_eras",
    "load_features_json",
    "load_tournament",
    "make_tournament",
    "split_eras",
    "synthesize",
    "target_columns",
    "validate_tournament",
]
