"""``fhe-toolkit participant ...``: train, check and export a model; run it on a round bundle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pandas as pd
from pydantic import ValidationError

from fhe_toolkit.cli import (
    ToolkitClickError,
    console,
    friendly_errors,
    notes,
    progress_bar,
    progress_reporter,
)
from fhe_toolkit.cli.data import read_predictions
from fhe_toolkit.cli.display import print_frame
from fhe_toolkit.cli.options import (
    features_json_option,
    fund_key_option,
    identity_option,
    note_unchecked,
    out_dir_option,
    scheduler_option,
    train_option,
    validation_option,
    workers_option,
)
from fhe_toolkit.data import feature_columns, load_features_json, load_tournament
from fhe_toolkit.data.io import FEATURES_JSON, parquet_columns
from fhe_toolkit.errors import ParticipantError
from fhe_toolkit.participant import (
    SPEC_FILE,
    compile_model,
    diagnose,
    export_model,
    run_bundle,
    train_model,
)
from fhe_toolkit.participant.model import NEUTRALIZED_MODE
from fhe_toolkit.protocol.families import FAMILIES, Family
from fhe_toolkit.protocol.files import read_regular
from fhe_toolkit.protocol.modelspec import FUND_FEATURE_SETS, NAME_PATTERN, Neutralization


@click.group()
def participant() -> None:
    """Participant: train a quantized model, export its public spec, run it on ciphertexts.

    \b
    1. fhe-toolkit participant train --train train.parquet --family linear --name me --out me/
    2. send me/model_spec.json to the fund; keep me/deployment/ (your weights) to yourself
       (add --neutralize-features model to 1. to have the fund neutralize your predictions)
    3. fhe-toolkit identity new me.pem; give me.pem.pub to the fund
    4. fhe-toolkit participant run BUNDLE_DIR --model me/ --identity me.pem --out submission/
    5. send submission/ to the fund
    """


@participant.command("families")
def families() -> None:
    """List the model families, their FHE-sized defaults and rough cost per row."""
    rows = pd.DataFrame(
        {
            "estimator": {f.name: f.estimator for f in FAMILIES.values()},
            "rows/ciphertext": {f.name: f.batch_size for f in FAMILIES.values()},
            "defaults": {f.name: json.dumps(f.defaults) for f in FAMILIES.values()},
            "notes": {f.name: f.summary for f in FAMILIES.values()},
        }
    ).rename_axis("family")
    print_frame(rows, "Model families (override defaults with --param key=value)", console)


@participant.command("train")
@train_option("Numerai-format training parquet (released training eras).")
@click.option(
    "--family",
    required=True,
    type=click.Choice(sorted(FAMILIES)),
    help="Model family; see `fhe-toolkit participant families`.",
)
@click.option(
    "--name",
    required=True,
    callback=lambda _ctx, _param, value: _checked_name(value),
    help="Model name the fund will know it by (a-z, 0-9, _ -).",
)
@out_dir_option("New directory for the model (spec, deployment, training record).")
@click.option(
    "--feature-set",
    help="Feature set from features.json (default: small, or every feature_* column when there "
    "is no features.json).",
)
@click.option(
    "--features",
    "feature_list",
    help="The features, instead of a set: comma-separated names, or @FILE with one per line.",
)
@features_json_option("--train")
@click.option("--target", default="target", show_default=True)
@validation_option("Validation parquet: score the model in clear, quantized and simulated FHE.")
@click.option(
    "--benchmark",
    "benchmark_path",
    type=click.Path(path_type=Path),
    help="Benchmark predictions for the validation rows (parquet or CSV: id and one column), "
    "to score BMC in the --validation report.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a family default, e.g. --param max_depth=4 (repeatable).",
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--circuit",
    is_flag=True,
    help="Compile a linear model into a circuit of its own (per-model keys) instead of running "
    "it on the round's packed encryption, the default for linear, ridge and logistic.",
)
@click.option(
    "--neutralize-features",
    "neutralize_features",
    metavar="SET",
    help="Declare in the spec that the fund neutralizes your decrypted predictions against "
    "these features, era by era, before scoring and paying them (you never see your live "
    "predictions, so you cannot do it yourself): 'model' (the model's own features), 'all' "
    "(every feature of the live data), a feature set of features.json, or feature names "
    "(comma-separated, or @FILE with one per line).",
)
@click.option(
    "--neutralize-proportion",
    type=float,
    metavar="P",
    help="Share of the predictions' fit on the --neutralize-features that the fund removes, "
    "within [0, 1] (default: 1, fully neutral).",
)
@friendly_errors
def train(
    train_path: Path,
    family: str,
    name: str,
    out_dir: Path,
    feature_set: str | None,
    feature_list: str | None,
    features_json: Path | None,
    target: str,
    validation_path: Path | None,
    benchmark_path: Path | None,
    params: tuple[str, ...],
    seed: int,
    circuit: bool,
    neutralize_features: str | None,
    neutralize_proportion: float | None,
) -> None:
    """Train, compile and export a model; optionally check it on validation eras.

    Writes OUT/model_spec.json (public: send it to the fund), OUT/deployment/ (private: your
    compiled circuit, or a linear model's integer weights) and OUT/training.json. Linear
    families run on the round's packed encryption by default (nothing to compile; --circuit
    compiles one instead). With --validation, prints CORR, FNC and exposure of the float model,
    the quantized model and the compiled circuit in simulation, so the cost of quantization is
    visible before anything is encrypted.

    With --neutralize-features, the spec declares a neutralization that the fund applies to
    your decrypted predictions before scoring and paying them; --validation then also shows the
    simulated predictions neutralized so ('neutralized'), as the fund will score them.
    """
    if (out_dir / SPEC_FILE).exists():
        raise ToolkitClickError(f"{out_dir} holds an exported model already; choose a new --out.")
    features = _chosen_features(train_path, feature_set, feature_list, features_json)
    declared = _declared_neutralization(
        neutralize_features, neutralize_proportion, train_path, features_json
    )
    if declared is not None:
        _check_linear_neutralization(FAMILIES[family], features, declared, train_path)
    data = load_tournament(train_path, features=features, targets=[target])
    with console.status(f"training {family} on {len(data):,} rows × {len(features)} features"):
        model = train_model(
            data, family=family, features=features, target=target,
            params=_parse_params(params), seed=seed, packed=False if circuit else None,
        )  # fmt: skip
    if not model.packed:
        with console.status("compiling for FHE"):
            compile_model(model, data)
    spec = export_model(model, out_dir, name, neutralization=declared)
    how = "packed: runs on the round's shared encryption" if model.packed else "compiled circuit"
    console.print(
        f"exported [bold]{spec.name}[/bold] ({family}, {len(features)} features, {how}) to "
        f"{out_dir}"
    )
    if declared is not None:
        console.print(
            f"the spec declares a neutralization: the fund removes {declared.describe()} from "
            "your decrypted predictions, era by era, before scoring them"
        )
    if validation_path is not None:
        against = (
            []
            if declared is None
            else declared.neutralizers(features, parquet_columns(validation_path))
        )
        validation = load_tournament(
            validation_path, features=list(dict.fromkeys([*features, *against])), targets=[target]
        )
        benchmark = None
        if benchmark_path is not None:
            table = read_predictions(benchmark_path)
            if table.shape[1] != 1:
                raise ToolkitClickError(
                    f"{benchmark_path} must hold one prediction column, not {list(table.columns)}."
                )
            benchmark = table.iloc[:, 0]
        with console.status("scoring on validation eras"):
            report = diagnose(model, validation, benchmark=benchmark, neutralization=declared)
        table = report["mean"].unstack("metric").reindex(report.index.unique("mode"))
        title = "Validation, mean per era: clear vs quantized vs simulated FHE"
        if declared is not None:
            title += f" vs {NEUTRALIZED_MODE} (what the fund scores)"
        print_frame(table, title, console)
        if declared is not None:
            notes.print(
                f"{NEUTRALIZED_MODE}: the simulated predictions with {declared.describe()} "
                f"removed ({len(against)} features, era by era), as the fund will neutralize "
                "the live ones"
            )
        report.to_csv(out_dir / "diagnostics.csv")
    console.print(
        f"next: send {out_dir / SPEC_FILE} to the fund; keep {out_dir / 'deployment'} private"
    )


@participant.command("run")
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The model directory written by `participant train`.",
)
@out_dir_option("Submission directory (also holds the checkpoint of an interrupted run).")
@identity_option("submission")
@fund_key_option
@workers_option("FHE execution")
@scheduler_option("the FHE execution")
@friendly_errors
def run(
    bundle_dir: Path,
    model_dir: Path,
    out_dir: Path,
    identity: Path,
    fund_key: str | None,
    workers: int | None,
    scheduler: str | None,
) -> None:
    """Run your model on every encrypted row of BUNDLE_DIR and write the signed submission.

    BUNDLE_DIR is your model's bundle (fund/rounds/R/bundles/NAME) or, for a linear model, the
    round's packed dataset (fund/rounds/R/packed). Rows run in worker processes on all cores,
    or on a Dask cluster with --scheduler; a crash of the FHE runtime costs one worker and is
    reported with the row. Interrupted (Ctrl-C)? Run the same command again: finished rows are
    kept.
    """
    note_unchecked(fund_key)
    with progress_bar("rows") as progress:
        submission = run_bundle(
            bundle_dir, model_dir, out_dir, identity=identity, fund_key=fund_key, workers=workers,
            scheduler=scheduler, on_progress=progress_reporter(progress, "FHE inference"),
        )  # fmt: skip
    console.print(f"submission written to {submission}; send this directory to the fund")


def _checked_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise click.BadParameter(
            f"{name!r} is not a model name: use a-z, 0-9, '_' and '-', starting with a letter or "
            "digit, at most 64 characters (e.g. carol-xgb)."
        )
    return name


def _chosen_features(
    train_path: Path, feature_set: str | None, feature_list: str | None, features_json: Path | None
) -> list[str]:
    """--features, else --feature-set from features.json, else (no features.json beside the
    data and none named) every feature_* column of the training file."""
    if feature_list is not None:
        if feature_set is not None:
            raise ToolkitClickError("give --features or --feature-set, not both.")
        return _listed_features(feature_list)
    metadata_path = features_json or train_path.with_name(FEATURES_JSON)
    if features_json is None and not metadata_path.exists() and feature_set is None:
        columns = feature_columns(parquet_columns(train_path))
        console.print(f"no {metadata_path}: using all {len(columns)} feature_* columns")
        return columns
    if not metadata_path.exists():
        raise ToolkitClickError(
            f"{metadata_path} does not exist: pass its path with --features-json, or list the "
            "features with --features (or leave out --feature-set to use every feature_* column)."
        )
    return load_features_json(metadata_path).features(feature_set or "small")


def _listed_features(text: str) -> list[str]:
    """Feature names, comma-separated or ``@FILE`` with one per line."""
    if text.startswith("@"):
        listed = read_regular(text[1:], 10_000_000, "a feature list", ParticipantError)
        return [f for f in listed.decode().split() if f]
    return [f.strip() for f in text.split(",") if f.strip()]


def _declared_neutralization(
    features: str | None, proportion: float | None, train_path: Path, features_json: Path | None
) -> Neutralization | None:
    """The neutralization --neutralize-features/--neutralize-proportion declare, checked before
    anything is trained: a known feature set, features the training data has, a proportion
    within [0, 1]."""
    if features is None:
        if proportion is not None:
            raise ToolkitClickError(
                "--neutralize-proportion needs --neutralize-features: name the features to "
                "neutralize against (e.g. --neutralize-features model)."
            )
        return None
    raw: dict[str, object] = {"proportion": 1.0 if proportion is None else proportion}
    if features in FUND_FEATURE_SETS:
        raw["feature_set"] = features
    elif features.startswith(("@", "feature_")) or "," in features:
        raw["features"] = _listed_features(features)
    else:
        metadata_path = features_json or train_path.with_name(FEATURES_JSON)
        if not metadata_path.exists():
            raise ToolkitClickError(
                f"--neutralize-features {features!r} is not {' or '.join(FUND_FEATURE_SETS)} "
                f"nor a list of feature names, and there is no {metadata_path} to look the set "
                "up in (pass it with --features-json)."
            )
        raw |= {
            "feature_set": features,
            "features": load_features_json(metadata_path).features(features),
        }
    try:
        declared = Neutralization.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            (
                "--neutralize-proportion"
                if err["loc"][:1] == ("proportion",)
                else "--neutralize-features"
            )
            + ": "
            + err["msg"].removeprefix("Value error, ")
            for err in exc.errors()[:3]
        )
        raise ToolkitClickError(f"the declared neutralization is not valid: {problems}.") from None
    absent = sorted(set(declared.features or []).difference(parquet_columns(train_path)))
    if absent:
        raise ToolkitClickError(
            f"--neutralize-features names {len(absent)} feature(s) {train_path} does not have "
            f"(e.g. {absent[:3]}); the fund neutralizes against features of the live data, "
            "which has the same columns."
        )
    return declared


def _check_linear_neutralization(
    family: Family, features: list[str], declared: Neutralization, train_path: Path
) -> None:
    """A linear model's prediction is a linear function of its features: neutralized against
    all of them, nothing is left (proportion 1: refused) or it is only rescaled (< 1: noted)."""
    linear = family.packable and family.post_processing == "identity"
    against = declared.neutralizers(features, parquet_columns(train_path))
    if not linear or not set(features) <= set(against):
        return
    if declared.proportion == 1:
        raise ToolkitClickError(
            f"a {family.name} model neutralized fully against all of its own features has "
            "nothing left to score (it would never be paid): neutralize against a subset of its "
            "features (e.g. the riskiest), lower --neutralize-proportion, or pick a non-linear "
            "family."
        )
    notes.print(
        f"note: a {family.name} model neutralized against all of its own features is only "
        "rescaled: its rank-based scores do not change. Neutralize against a subset of its "
        "features to change them."
    )


def _parse_params(pairs: tuple[str, ...]) -> dict[str, object]:
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ToolkitClickError(f"--param takes KEY=VALUE, got {pair!r}.")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params
