"""``fhe-toolkit data ...`` and ``fhe-toolkit score``: tournament data and clear scoring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pandas as pd

from fhe_toolkit.cli import ToolkitClickError, console, friendly_errors, progress_bar
from fhe_toolkit.cli.display import format_option, print_frame
from fhe_toolkit.cli.options import (
    data_option,
    default_option,
    features_json_option,
    out_dir_option,
    synthetic_data_options,
)
from fhe_toolkit.data import (
    SynthConfig,
    load_features_json,
    load_tournament,
    synthesize,
    target_columns,
)
from fhe_toolkit.data.io import FEATURES_JSON
from fhe_toolkit.data.split import split_eras
from fhe_toolkit.scoring import by_model, score_eras, summarize


@click.group()
def data() -> None:
    """Tournament data: generate synthetic data, check real Numerai files, split one by era."""


@data.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@default_option("--train-eras", SynthConfig)
@default_option("--validation-eras", SynthConfig)
@default_option(
    "--live-eras",
    SynthConfig,
    "Live eras, one round each. With more than one, each is also written on its own: "
    "live/era_<era>.parquet, its targets in live_targets/era_<era>.parquet.",
)
@synthetic_data_options(
    SynthConfig,
    embargo_eras="Eras left out between train, validation and live (targets overlap).",
    n_features="Number of feature columns (Numerai v5: 2748).",
    n_groups="Feature groups (correlated blocks).",
    noise="Target noise; signal has unit variance. Higher means harder.",
    regime_length="Mean number of eras a sign regime lasts (the regime-flipping features switch "
    "sign between regimes). At least 1.",
)
@click.option(
    "--regime-column/--no-regime-column",
    default=SynthConfig.regime_column,
    show_default=True,
    help="Also write each era's regime (+1 / -1) as a 'regime' column, live rows included: "
    "for studies (e.g. `fhe-toolkit simulate --data`), not for files handed to participants.",
)
@default_option("--seed", SynthConfig)
@friendly_errors
def data_synth(out_dir: Path, **settings: Any) -> None:
    """Write a synthetic Numerai-format tournament to OUT_DIR.

    Writes train.parquet, validation.parquet, live.parquet (targets blank), live_targets.parquet
    (the fund's copy of the live targets), features.json and synth_config.json; with
    --live-eras N above 1, also one file per live era for one round each (live/, and its
    targets for `fund score --targets` in live_targets/). The same seed gives the same files.
    Large sizes are written era by era, never held whole in memory.

    Example (real Numerai scale): fhe-toolkit data synth big/ --train-eras 500
    --rows-per-era 5000 --features 780
    """
    config = SynthConfig(**settings)
    with progress_bar("eras") as progress:
        task = progress.add_task("synthesizing", total=len(config.era_splits()))
        paths = synthesize(
            out_dir, config, on_era=lambda done, _: progress.update(task, completed=done)
        )
    width = max(map(len, paths))
    for name, path in paths.items():
        console.print(f"  {name:<{width}} {path}")


@data.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--feature-set", help="Check only this set from features.json (default: all feature_* columns)."
)
@features_json_option("PATH")
@friendly_errors
def data_validate(path: Path, feature_set: str | None, features_json: Path | None) -> None:
    """Check that a parquet file follows the Numerai format.

    Reports every problem at once, naming the column and the first rows at fault: missing era,
    duplicate ids, non-integer or out-of-range features, targets outside 0/.25/.5/.75/1.
    """
    df = load_tournament(path, feature_set=feature_set, features_json=features_json)
    features = [c for c in df.columns if str(c).startswith("feature_")]
    console.print(
        f"[green]ok[/green] {path}: {len(df):,} rows, {df['era'].nunique()} eras, "
        f"{len(features)} features, targets {target_columns(list(df.columns))}"
    )


@click.command("score")
@click.argument("predictions_path", metavar="PREDICTIONS", type=click.Path(path_type=Path))
@data_option("Numerai-format parquet with era, target and features for the predicted ids.")
@click.option("--target", default="target", show_default=True)
@click.option(
    "--meta-model",
    "meta_col",
    help="Column of PREDICTIONS holding the meta model (not scored itself). Default: "
    "the stake-weighted meta model of the scored models.",
)
@click.option(
    "--benchmark",
    "benchmark_col",
    help="Column of PREDICTIONS holding a benchmark model, for BMC (not scored itself).",
)
@click.option(
    "--stakes",
    "stakes_path",
    type=click.Path(path_type=Path),
    help='JSON {"model": stake, ...} for the meta model. Default: equal stakes.',
)
@click.option("--feature-set", help="Exposure features: a set from features.json (default: all).")
@click.option(
    "--fnc-feature-set", help="FNC features: a set from features.json (default: as exposure)."
)
@features_json_option("--data")
@click.option(
    "--exposure-method",
    type=click.Choice(["spearman", "pearson"]),
    default="spearman",
    show_default=True,
)
@out_dir_option("Write per_era.csv and summary.csv here.", required=False)
@friendly_errors
def score(
    predictions_path: Path,
    data_path: Path,
    target: str,
    meta_col: str | None,
    benchmark_col: str | None,
    stakes_path: Path | None,
    feature_set: str | None,
    fnc_feature_set: str | None,
    features_json: Path | None,
    exposure_method: str,
    out_dir: Path | None,
) -> None:
    """Score PREDICTIONS (parquet or CSV: id, then one column per model) era by era.

    Prints per-model means of CORR, MMC (against --meta-model or the stake-weighted meta model),
    BMC (with --benchmark), FNC and feature exposure, with Sharpe and max drawdown in summary.csv.
    """
    predictions = read_predictions(predictions_path)
    metadata = (
        load_features_json(features_json or data_path.with_name(FEATURES_JSON))
        if feature_set or fnc_feature_set
        else None
    )
    exposure = metadata.features(feature_set) if metadata and feature_set else None
    fnc = metadata.features(fnc_feature_set) if metadata and fnc_feature_set else None
    frame = load_tournament(data_path, features=_union(exposure, fnc), targets=[target])
    refs = {}
    for option, column in (("--meta-model", meta_col), ("--benchmark", benchmark_col)):
        if column is not None:
            if column not in predictions.columns:
                raise ToolkitClickError(
                    f"{option} {column!r} is not a column of {predictions_path}; it has "
                    f"{list(predictions.columns)}."
                )
            refs[option] = predictions.pop(column)
    stakes = None
    if "--meta-model" not in refs and predictions.shape[1] > 1:
        stakes = (
            pd.Series(_read_json(stakes_path), dtype="float64")
            if stakes_path
            else pd.Series(1.0, index=predictions.columns)
        )
    per_era = score_eras(
        predictions,
        frame,
        target=target,
        meta_model=refs.get("--meta-model"),
        stakes=stakes,
        benchmark=refs.get("--benchmark"),
        exposure_features=exposure,
        fnc_features=fnc,
        exposure_method=exposure_method,  # type: ignore[arg-type]
    )
    summary = summarize(per_era)
    print_frame(by_model(summary), f"Mean per era over {per_era['era'].nunique()} era(s)", console)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        per_era.to_csv(out_dir / "per_era.csv", index=False)
        summary.to_csv(out_dir / "summary.csv")
        console.print(f"wrote {out_dir / 'per_era.csv'} and {out_dir / 'summary.csv'}")


def read_predictions(path: Path) -> pd.DataFrame:
    """Predictions from parquet or CSV, indexed by id."""
    if not path.is_file():
        raise ToolkitClickError(f"{path} does not exist.")
    try:
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as exc:
        raise ToolkitClickError(f"{path} could not be read as parquet or CSV: {exc}") from None
    if "id" in frame.columns:
        frame = frame.set_index("id")
    if frame.index.name != "id":
        raise ToolkitClickError(
            f"{path} needs an 'id' column or index, one row per id; "
            f"it has {list(frame.columns)[:5]}."
        )
    return frame


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ToolkitClickError(f"{path} is not readable JSON: {exc}") from None


def _union(*lists: list[str] | None) -> list[str] | None:
    present = [x for x in lists if x is not None]
    return list(dict.fromkeys(c for x in present for c in x)) if present else None


@data.command("split")
@click.argument("path", type=click.Path(path_type=Path))
@out_dir_option("Folder to write era_<era>.parquet files into (made if missing).")
@click.option(
    "--eras",
    "era_lists",
    multiple=True,
    metavar="ERA[,ERA...]",
    help="Only these eras, as labelled in the era column (e.g. 0095,0096; repeatable). "
    "Default: every era.",
)
@format_option
@friendly_errors
def data_split(path: Path, out_dir: Path, era_lists: tuple[str, ...], output_format: str) -> None:
    """Split PATH (live.parquet, or any tournament file) into one parquet file per era.

    Each era's rows, every column kept, go to OUT/era_<era>.parquet: one round's live file
    each, in round order when listed (labels of digits are zero-padded to one width). Refuses,
    before writing anything, a path that is not a regular parquet file, a file with no era
    column or no rows, an era it lacks, and files that exist already in --out.

    Example: fhe-toolkit data split live.parquet --out live/
    """
    eras = [e.strip() for chunk in era_lists for e in chunk.split(",") if e.strip()]
    written = split_eras(path, out_dir, eras=eras if era_lists else None)
    frame = pd.DataFrame(
        [{"era": f.era, "rows": f.rows, "file": str(f.path)} for f in written]
    ).set_index("era")
    title = f"{path}: {len(written)} era file(s)"
    print_frame(frame, title, console, output_format=output_format)
