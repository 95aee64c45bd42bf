"""The fund's side of a round, step by step, with the Python API.

Run from the repository root, interleaved with examples/participant.py:

    python examples/fund.py prepare work      # synthesize data; release train + features.json
    python examples/participant.py train work # the participant trains and exports a model
    python examples/fund.py open work         # record alice and her key, register her model,
                                              # encrypt the live era for it (signed bundle)
    python examples/participant.py run work   # the participant runs it on the ciphertexts
    python examples/fund.py score work        # decrypt once, score, pay

Everything lands in ``work/``: ``data/`` (fund's data), ``fund/`` (records), ``keys/`` (secret
keys, 0600), ``participant/`` (the participant's side).
"""

from __future__ import annotations

import sys
from pathlib import Path

from fhe_toolkit.data import SynthConfig, load_tournament, synthesize
from fhe_toolkit.fund import Fund, fund_benchmark

ROUND = "round-1"


def main(step: str, work: Path) -> None:
    fund = Fund(work / "fund", key_store=work / "keys")
    data = work / "data"
    if step == "prepare":
        paths = synthesize(data, SynthConfig(train_eras=40, validation_eras=6, rows_per_era=150))
        print(f"released {paths['train']} and {paths['features']} to participants")
    elif step == "open":
        fund.add_participant("alice", work / "participant" / "identity.pem.pub")
        spec = fund.register(
            work / "participant" / "model_spec.json", participant="alice", stake=100.0
        )
        bundles = fund.open_round(ROUND, load_tournament(data / "live.parquet"))
        print(f"registered {spec.name}; its bundle is {bundles[spec.name]}")
    elif step == "score":
        predictions = fund.receive(ROUND, work / "participant" / "submission")
        print(f"decrypted {len(predictions)} predictions; the keys are now retired")
        live = load_tournament(data / "live.parquet")
        benchmark = fund_benchmark(load_tournament(data / "train.parquet"), live)
        fund.close_round(ROUND)  # no more submissions: the round can be resolved
        results = fund.score(ROUND, data / "live_targets.parquet", live=live, benchmark=benchmark)
        print(results.scores.round(4).T)
    else:
        raise SystemExit(f"unknown step {step!r}: use prepare, open or score")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], Path(sys.argv[2]))
