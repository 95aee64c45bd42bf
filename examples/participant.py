"""The participant's side of a round, step by step, with the Python API.

See examples/fund.py for the order of the steps. The participant sees the released training
data and the encrypted bundle, never a live feature value.

    python examples/participant.py train work   # train, check, compile, export; a signing key
    python examples/participant.py run work     # run the model on the fund's ciphertexts
"""

from __future__ import annotations

import sys
from pathlib import Path

from fhe_toolkit.data import load_features_json, load_tournament
from fhe_toolkit.participant import (
    compile_model,
    diagnose,
    export_model,
    run_bundle,
    train_model,
)
from fhe_toolkit.protocol.signing import create_identity

NAME = "alice"


def main(step: str, work: Path) -> None:
    data, mine = work / "data", work / "participant"
    if step == "train":
        features = load_features_json(data / "features.json").features("small")
        train = load_tournament(data / "train.parquet", features=features)
        model = train_model(train, family="xgboost", features=features, params={"max_depth": 2})
        compile_model(model, train)
        report = diagnose(model, load_tournament(data / "validation.parquet", features=features))
        print(report["mean"].unstack("metric").round(4))
        spec = export_model(model, mine, NAME)
        create_identity(mine / "identity.pem")
        print(f"send {mine / 'model_spec.json'} ({spec.family}) and your public key")
        print(f"{mine / 'identity.pem.pub'} to the fund")
    elif step == "run":
        bundle = work / "fund" / "rounds" / "round-1" / "bundles" / NAME
        submission = run_bundle(
            bundle, mine, mine / "submission", identity=mine / "identity.pem",
            fund_key=work / "keys" / "fund_signing_key.pem.pub",  # the fund's public key
            on_progress=lambda done, total: print(f"\r{done}/{total} rows", end="", flush=True),
        )  # fmt: skip
        print(f"\nsend {submission} to the fund")
    else:
        raise SystemExit(f"unknown step {step!r}: use train or run")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], Path(sys.argv[2]))
