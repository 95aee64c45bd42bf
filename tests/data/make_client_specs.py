"""Write ``concrete_client_specs.json``: Concrete's client specs of the toolkit's circuits.

Real ``client.specs.json`` contents for the schema tests (``tests/test_client_specs.py``), which
run without Concrete: per family, the circuit ``compile_model`` makes for a model trained on the
test suite's small synthetic tournament (5 features), and an encrypted-training SGD step on 3
features. Regenerate (about a minute) after a Concrete upgrade:

    PYTHONPATH=. python tests/data/make_client_specs.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fhe_toolkit.data import make_tournament
from fhe_toolkit.participant import compile_model, export_model, train_model
from fhe_toolkit.participant.training import TrainingJob, compile_training_job
from tests.conftest import SMALL

OUT = Path(__file__).with_name("concrete_client_specs.json")
FAMILIES = ("decision_tree", "random_forest", "xgboost", "neural_net", "linear", "logistic")


def main() -> None:
    frame, metadata = make_tournament(SMALL)
    train = frame[frame["data_type"] == "train"]
    specs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for family in FAMILIES:
            features = metadata.features("small")
            model = train_model(train, family=family, features=features, packed=False)
            compile_model(model, train)
            spec = export_model(model, Path(scratch) / family, family.replace("_", "-"))
            specs[family] = json.loads(spec.client_specs_bytes())
        job = TrainingJob(features=[f"feature_{i}" for i in range(3)], iterations=2, batch_size=4)
        training = compile_training_job(job, Path(scratch) / "training", "sgd")
        specs["training"] = json.loads(training.client_specs_bytes())
    OUT.write_text(json.dumps(specs, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
