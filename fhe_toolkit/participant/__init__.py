"""The participant's side: train and export a model, run it on encrypted bundles, and train on
encrypted data.

- :mod:`~fhe_toolkit.participant.model`: train, check, compile and export a model
- :mod:`~fhe_toolkit.participant.inference`: run it on a round bundle, write the submission
- :mod:`~fhe_toolkit.participant.training`: encrypted training jobs
"""

from fhe_toolkit.participant.inference import run_bundle
from fhe_toolkit.participant.model import (
    SPEC_FILE,
    TrainedModel,
    compile_model,
    diagnose,
    export_model,
    load_model_dir,
    train_model,
)

__all__ = [
    "SPEC_FILE",
    "TrainedModel",
    "compile_model",
    "diagnose",
    "export_model",
    "load_model_dir",
    "run_bundle",
    "train_model",
]
