"""A tournament of several rounds in real FHE, fund and participants side by side.

Sizes are chosen to finish in a few minutes on 2 cores: the tree models cost 0.3–0.5 s per live
row in FHE, so the live eras are small. Every step goes through the same API the CLI uses.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fhe_toolkit.data import SynthConfig, load_features_json, load_tournament, synthesize
from fhe_toolkit.data.schema import ERA
from fhe_toolkit.fund import Fund, fund_benchmark
from fhe_toolkit.fund.report import write_report
from fhe_toolkit.participant import (
    compile_model,
    diagnose,
    export_model,
    run_bundle,
    train_model,
)
from fhe_toolkit.protocol.artifacts import (
    CIPHERTEXTS,
    COMPRESSION_KEY,
    EVALUATION_KEYS,
    PACKED_FEATURES,
)
from fhe_toolkit.protocol.families import get_family
from fhe_toolkit.protocol.signing import create_identity


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
    DemoParticipant("erin", "ridge", "all", 90.0),
)
"""Linear models (alice, dave, erin) run packed, on one shared encryption per round; erin's
reads all 800 features, about the width of Numerai's 780-feature set. The trees are circuits."""
DEMO_DATA = SynthConfig(
    train_eras=60, validation_eras=8, live_eras=3, rows_per_era=100, n_features=800
)
STAKE_CHANGE = ("bob", 75.0)
"""Between the first and second round, bob raises his stake."""
IDENTITY = "identity.pem"
"""Each participant's private signing key, in its own directory."""


@dataclass
class StepTimer:
    steps: list[dict[str, Any]]
    say: Callable[[str], None]

    def run(self, label: str, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``action(*args, **kwargs)``, saying what it does and recording its time."""
        self.say(f"… {label}")
        start = time.perf_counter()
        result = action(*args, **kwargs)
        seconds = time.perf_counter() - start
        self.steps.append({"step": label, "seconds": round(seconds, 2)})
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
    """Synthesize data; each participant makes a signing identity, trains and exports a model;
    the fund records them and runs one encrypted round per live era: fresh keys, signed
    bundles, FHE inference, signed submissions, one decryption per model, scores and payouts
    that change the stakes. Ends with the leaderboard and the HTML report. Returns what
    happened (also written to ``out_dir/demo_summary.json``); ``out_dir`` is replaced."""
    root = Path(out_dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    timer = StepTimer([], say)
    paths = timer.run(
        f"fund: synthesize {len(config.era_splits())} eras × {config.rows_per_era} rows × "
        f"{config.n_features} features",
        synthesize, root / "data", config,
    )  # fmt: skip
    metadata = load_features_json(paths["features"])
    train = load_tournament(paths["train"])
    validation = load_tournament(paths["validation"])
    live_all = load_tournament(paths["live"])
    targets_all = pd.read_parquet(paths["live_targets"])
    fund = Fund(root / "fund", root / "keys")
    fund_key = fund.public_key()
    diagnostics = {}
    for who in participants:
        features = metadata.features(who.feature_set)
        home = root / "participants" / who.name

        def build(who: DemoParticipant, features: list[str], home: Path) -> Any:
            model = train_model(train, family=who.family, features=features)
            compile_model(model, train)
            export_model(model, home, who.name)
            return model

        how = "export packed" if get_family(who.family).packable else "compile"
        model = timer.run(
            f"{who.name}: train + {how} {who.family} on {len(features)} features",
            build, who, features, home,
        )  # fmt: skip
        report = diagnose(model, validation, modes=("clear", "quantized", "simulated"))
        diagnostics[who.name] = report.xs("corr", level="metric")["mean"].round(4).to_dict()
        fund.add_participant(who.name, create_identity(home / IDENTITY))
        fund.register(home / "model_spec.json", participant=who.name, stake=who.stake)

    sizes: dict[str, Any] = {}
    rounds = []
    for number, era in enumerate(sorted(live_all[ERA].unique()), start=1):
        name = f"round-{number}"
        live = live_all[live_all[ERA] == era]
        if number == 2:
            fund.set_stake(*STAKE_CHANGE)
            say(f"  {STAKE_CHANGE[0]} sets his stake to {STAKE_CHANGE[1]:g} from round 2 on")
        bundles = timer.run(
            f"fund: open {name} (era {era}): fresh keys, encrypt {len(live)} rows once for the "
            "packed models and once per circuit model",
            fund.open_round, name, live, workers=workers,
            on_progress=_scoped(on_rows, f"{name} encrypt"),
        )  # fmt: skip
        sizes = sizes or bundle_sizes(bundles, len(live))
        for who in participants:
            home = root / "participants" / who.name
            submission = home / f"submission-{name}"

            timer.run(
                f"{who.name}: FHE inference ({who.family}) on {len(live)} rows",
                run_bundle, bundles[who.name], home, submission, identity=home / IDENTITY,
                fund_key=fund_key, workers=workers,
                on_progress=_scoped(on_rows, f"{name} {who.name} FHE"),
            )  # fmt: skip
            timer.run(
                f"fund: verify + decrypt {who.name}'s submission, retire its keys",
                fund.receive, name, submission, workers=workers,
            )  # fmt: skip
        fund.close_round(name)
        results = timer.run(
            f"fund: resolve {name} (CORR, MMC, BMC, FNC, exposure) and pay",
            fund.score, name, targets_all.loc[live.index], live=live,
            benchmark=fund_benchmark(train, live),
        )  # fmt: skip
        rounds.append(
            {"round": name, "era": era,
             "scores": json.loads(results.scores.round(4).to_json(orient="index"))}
        )  # fmt: skip
    report_path = timer.run(
        "fund: leaderboard and HTML report", write_report, fund.db, root / "report.html"
    )
    summary = {
        "data": asdict(config),
        "live_rows_per_round": config.rows_per_era,
        "steps": timer.steps,
        "sizes": sizes,
        "validation_corr": diagnostics,
        "rounds": rounds,
        "leaderboard": json.loads(fund.leaderboard().round(4).to_json(orient="index")),
        "report": str(report_path),
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


def bundle_sizes(bundles: Mapping[str, Path], rows: int) -> dict[str, dict[str, int]]:
    """What each bundle weighs: its ciphertexts per row and its public key, the packed dataset
    once (under the models that share it)."""
    by_path: dict[Path, list[str]] = {}
    for model, path in bundles.items():
        by_path.setdefault(path, []).append(model)
    sizes = {}
    for path, models in by_path.items():
        table, key = (
            (PACKED_FEATURES, COMPRESSION_KEY)
            if (path / PACKED_FEATURES).is_file()
            else (CIPHERTEXTS, EVALUATION_KEYS)
        )
        sizes[", ".join(models)] = {
            "ciphertext_bytes_per_row": round((path / table).stat().st_size / rows),
            "public_key_bytes": (path / key).stat().st_size,
        }
    return sizes


def steps_table(summary: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(summary["steps"]).set_index("step")[["seconds"]]
