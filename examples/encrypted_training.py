"""Encrypted training across the two roles, step by step, with the Python API.

Run from the repository root, one step after the other (or ``all``); each step says whose it is:

    python examples/encrypted_training.py prepare work   # fund: data; release features.json
    python examples/encrypted_training.py declare work   # participant: identity, declare a job
    python examples/encrypted_training.py open work      # fund: encrypt batches, fresh keys
    python examples/encrypted_training.py train work     # participant: SGD on ciphertexts, sign
    python examples/encrypted_training.py decrypt work   # fund: decrypt the weights once
    python examples/encrypted_training.py model work     # participant: a model for the rounds

The job is tiny (the small feature set, batches of 2 rows, 3 SGD steps): the fund's key
generation takes about a minute and each step about ten seconds on 2 cores. The fund trains on
its own rows (here the synthetic training eras; in practice, eras it never released), which the
participant never sees in the clear. The fund signs the bundle and the participant checks it;
the participant signs the result and the fund takes it only with that signature. Everything
lands in ``work/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fhe_toolkit.data import SynthConfig, load_features_json, load_tournament, synthesize
from fhe_toolkit.fund import Fund
from fhe_toolkit.fund.training import WEIGHTS_FILE, FundTraining
from fhe_toolkit.participant import compile_model, diagnose, export_model
from fhe_toolkit.participant.training import (
    TRAINING_SPEC_FILE,
    TrainingJob,
    compile_training_job,
    load_training_job,
    load_weights,
    model_from_weights,
    run_training_bundle,
)
from fhe_toolkit.protocol.signing import create_identity, public_key_path

JOB = "job-1"
STEPS = ("prepare", "declare", "open", "train", "decrypt", "model")


def main(step: str, work: Path) -> None:
    data, mine = work / "data", work / "participant"
    fund = FundTraining(work / "fund", key_store=work / "keys")
    if step == "prepare":
        paths = synthesize(data, SynthConfig(train_eras=20, validation_eras=4, rows_per_era=100))
        print(f"fund: released {paths['features']} (the feature sets) to participants")
    elif step == "declare":
        create_identity(mine / "alice.pem")
        print(f"participant: give {public_key_path(mine / 'alice.pem')} to the fund")
        features = load_features_json(data / "features.json").features("small")
        job = TrainingJob(features=features, iterations=3, batch_size=2, seed=1)
        spec = compile_training_job(job, mine / "job", "alice-sgd")
        print(f"participant: send {mine / 'job' / TRAINING_SPEC_FILE} ({spec.name}) to the fund")
    elif step == "open":
        records = Fund(work / "fund", work / "keys")
        records.add_participant("alice", public_key_path(mine / "alice.pem"))
        spec_path = mine / "job" / TRAINING_SPEC_FILE
        rows = load_tournament(data / "train.parquet")
        bundle = fund.open_job(JOB, spec_path, rows, participant="alice")
        print(f"fund: hand {bundle} and {public_key_path(fund.identity_path)} to the participant")
    elif step == "train":
        result = run_training_bundle(
            work / "fund" / "training" / JOB / "bundle", mine / "job", mine / "result",
            identity=mine / "alice.pem", fund_key=public_key_path(fund.identity_path),
            on_progress=lambda done, total: print(f"participant: step {done}/{total}", flush=True),
        )  # fmt: skip
        print(f"participant: send {result} (encrypted weights) to the fund")
    elif step == "decrypt":
        weights = fund.receive(JOB, mine / "result")
        print(f"fund: weights {weights.coef}, intercept {weights.intercept:.4f}; the keys are")
        print(f"      retired. Return {fund.job_dir(JOB) / WEIGHTS_FILE} to the participant.")
    elif step == "model":
        spec, _ = load_training_job(mine / "job")
        train = load_tournament(data / "train.parquet", features=spec.features)
        weights = load_weights(work / "fund" / "training" / JOB / WEIGHTS_FILE)
        model = model_from_weights(weights, spec, train)
        compile_model(model, train)
        report = diagnose(model, load_tournament(data / "validation.parquet"))
        print(report["mean"].unstack("metric").round(4))
        export_model(model, mine / "model", "alice-sgd-model")
        print(f"participant: register {mine / 'model' / 'model_spec.json'} for the next round")
    else:
        raise SystemExit(f"unknown step {step!r}: use one of {', '.join(STEPS)} or all")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    for name in STEPS if sys.argv[1] == "all" else [sys.argv[1]]:
        main(name, Path(sys.argv[2]))
