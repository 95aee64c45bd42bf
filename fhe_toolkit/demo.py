"""One whole tournament round in real FHE, fund and participants side by side.

Sizes are chosen to finish in a few minutes on 2 cores: the tree models cost 0.3–0.5 s per live
row in FHE, so the live era is small. Every step goes through the same API the CLI uses.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fhe_toolkit.bundle import CIPHERTEXTS, EVALUATION_KEYS
from fhe_toolkit.data import SynthConfig, load_features_json, load_tournament, synthesize
from fhe_toolkit.fund import Fund, fund_benchmark
from fhe_toolkit.participant import compile_model, diagnose, export_model, run_bundle, train_model


@dataclass(frozen=True)
class DemoParticipant:
    name: str
    family: str
    feature_set: str
    stake: float


PARTICIPANTS = (
    DemoParticipant("alice", "linear", "small", 100.0),
    DemoParticipant("bob", "decision_tree", "small", 50.0),
    DemoParticipant("carol", "xgboost", "small", 80.0),
    DemoParticipant("dave", "ridge", "medium", 120.0),
)
DEMO_DATA = SynthConfig(train_eras=60, validation_eras=8, live_eras=1, rows_per_era=200)


@dataclass
class StepTimer:
    steps: list[dict[str, Any]]
    say: Callable[[str], None]

    def run(self, label: str, action: Callable[[], Any], **facts: Any) -> Any:
        self.say(f"… {label}")
        start = time.perf_counter()
        result = action()
        seconds = time.perf_counter() - start
        self.steps.append({"step": label, "seconds": round(seconds, 2), **facts})
        self.say(f"  done in {seconds:.1f}s")
        return result


def run_demo(
    out_dir: str | Path,
    *,
    config: SynthConfig = DEMO_DATA,
    participants: tuple[DemoParticipant, ...] = PARTICIPANTS,
    workers: int | None = None,
    say: Callable[[str], None] = print,
    on_rows: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Synthesize data, train and export each participant's model, open an encrypted round, run
    every model on its ciphertexts, decrypt, score and pay. Returns what happened (also written
    to ``out_dir/demo_summary.json``); ``out_dir`` is replaced."""
    root = Path(out_dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    timer = StepTimer([], say)
    paths = timer.run(
        f"fund: synthesize {len(config.era_splits())} eras × {config.rows_per_era} rows × "
        f"{config.n_features} features",
        lambda: synthesize(root / "data", config),
    )
    metadata = load_features_json(paths["features"])
    train = load_tournament(paths["train"])
    validation = load_tournament(paths["validation"])
    live = load_tournament(paths["live"])
    fund = Fund(root / "fund", root / "keys")
    diagnostics = {}
    for who in participants:
        features = metadata.features(who.feature_set)

        def build(who: DemoParticipant = who, features: list[str] = features) -> Any:
            model = train_model(train, family=who.family, features=features)
            compile_model(model, train)
            export_model(model, root / "participants" / who.name, who.name)
            return model

        model = timer.run(
            f"{who.name}: train + compile {who.family} on {len(features)} features", build
        )
        report = diagnose(model, validation, modes=("clear", "quantized", "simulated"))
        diagnostics[who.name] = report.xs("corr", level="metric")["mean"].round(4).to_dict()
        fund.register(root / "participants" / who.name / "model_spec.json", stake=who.stake)

    bundles = timer.run(
        f"fund: open round, fresh keys + encrypt {len(live)} live rows for each model",
        lambda: fund.open_round("round-1", live, on_progress=_scoped(on_rows, "encrypt")),
    )
    sizes = {
        name: {
            "ciphertext_bytes_per_row": round((path / CIPHERTEXTS).stat().st_size / len(live)),
            "evaluation_key_bytes": (path / EVALUATION_KEYS).stat().st_size,
        }
        for name, path in bundles.items()
    }
    for who in participants:
        model_dir = root / "participants" / who.name
        submission = model_dir / "submission-round-1"

        def infer(who: DemoParticipant = who, model_dir: Path = model_dir) -> Path:
            return run_bundle(
                bundles[who.name], model_dir, model_dir / "submission-round-1",
                workers=workers, on_progress=_scoped(on_rows, f"{who.name} FHE"),
            )  # fmt: skip

        def receive(submission: Path = submission) -> pd.Series:
            return fund.receive("round-1", submission, workers=workers)

        timer.run(f"{who.name}: FHE inference ({who.family}) on {len(live)} encrypted rows", infer)
        timer.run(f"fund: verify + decrypt {who.name}'s submission, retire its keys", receive)
    results = timer.run(
        "fund: score (CORR, MMC, BMC, FNC, exposure) and pay",
        lambda: fund.score(
            "round-1", paths["live_targets"], live=live, benchmark=fund_benchmark(train, live)
        ),
    )
    summary = {
        "data": asdict(config),
        "live_rows": len(live),
        "steps": timer.steps,
        "sizes": sizes,
        "validation_corr": diagnostics,
        "scores": json.loads(results.scores.round(4).to_json(orient="index")),
        "results_dir": str(results.directory),
    }
    (root / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _scoped(
    callback: Callable[[str, int, int], None] | None, label: str
) -> Callable[..., None] | None:
    if callback is None:
        return None

    def forward(*args: Any) -> None:
        done, total = args[-2], args[-1]
        name = f"{label} {args[0]}" if len(args) == 3 else label
        callback(name, done, total)

    return forward


def steps_table(summary: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(summary["steps"]).set_index("step")[["seconds"]]
