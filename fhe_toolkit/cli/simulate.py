"""``fhe-toolkit simulate``: the incentive lab, a seeded tournament in the clear."""

from __future__ import annotations

from pathlib import Path

import click

from fhe_toolkit.cli import ToolkitClickError, console, friendly_errors, progress_bar
from fhe_toolkit.cli.display import print_frame
from fhe_toolkit.cli.options import (
    data_option,
    default_option,
    out_dir_option,
    synthetic_data_options,
)
from fhe_toolkit.lab import ARCHETYPES, DEFAULT_ACCOUNTS, LabConfig, PayoutRule, run_lab
from fhe_toolkit.lab import write_outputs as write_lab_outputs
from fhe_toolkit.scoring import COMBINE_METHODS

DEFAULTS = LabConfig()
RULE = PayoutRule()


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ToolkitClickError(
            f"--multipliers takes numbers separated by commas (e.g. 1,1,2), not {text!r}."
        ) from None
    if not values:
        raise ToolkitClickError("--multipliers needs at least one number (1 for none).")
    return values


def _accounts(given: tuple[str, ...]) -> dict[str, int]:
    counts = dict(DEFAULT_ACCOUNTS)
    for item in given:
        name, sep, count = item.partition("=")
        if not sep or name not in ARCHETYPES or not count.strip().isdigit():
            raise ToolkitClickError(
                f"--accounts takes ARCHETYPE=COUNT (e.g. sybil=1), not {item!r}; archetypes: "
                f"{', '.join(ARCHETYPES)}."
            )
        counts[name] = int(count)
    return counts


@click.command("simulate")
@out_dir_option("Write summary.csv, rounds.csv, methods.csv, claims.csv, report.html ... here.")
@data_option(
    "Play the fund's own eras from this Numerai-format parquet (era, feature_*, target; "
    "a 'regime' column is used if present) instead of synthetic data: the last --rounds eras "
    "are played, the --train-eras before them train the models.",
    required=False,
)
@default_option("--rounds", DEFAULTS, "Rounds (eras) played.")
@default_option("--train-eras", DEFAULTS, "Eras the models train on.")
@synthetic_data_options(
    DEFAULTS,
    embargo_eras="Eras skipped between training and the first round.",
    noise="Synthetic target noise against a signal of unit spread (12: CORR near 0.05).",
    regime_length="Mean eras a synthetic sign regime lasts.",
)
@default_option("--seed", DEFAULTS)
@default_option("--corr-weight", RULE, "Weight of CORR in the payout score; 0 pays on MMC only.")
@default_option("--mmc-weight", RULE)
@default_option("--clip", RULE, "A round pays or burns at most this share of the stake.")
@default_option("--payout-factor", RULE)
@click.option(
    "--multipliers", default="1", show_default=True,
    help="Per-round payout multipliers, comma-separated, repeated over the rounds (e.g. 1,1,2).",
)  # fmt: skip
@click.option(
    "--meta-model",
    "method",
    type=click.Choice(list(COMBINE_METHODS)),
    default=DEFAULTS.method,
    show_default=True,
    help="How the fund combines forecasts into the meta model that MMC is scored against.",
)
@click.option(
    "--compare/--no-compare", default=True, show_default=True,
    help="Also play the other meta-model methods (methods.csv).",
)  # fmt: skip
@default_option(
    "--reputation-threshold",
    DEFAULTS,
    "reputation_filtered: the mean payout score of the latest rounds a model needs.",
)
@default_option("--reputation-rounds", DEFAULTS)
@default_option(
    "--cluster-threshold",
    DEFAULTS,
    "cluster_capped: |correlation| at which two submissions are one forecast.",
)
@click.option(
    "--cluster-cap", default=DEFAULTS.cluster_cap, show_default=True,
    help="cluster_capped: the largest share of all stakes one cluster (one forecast, however "
    "many accounts submit it) weighs in the meta model; 1 caps nothing.",
)  # fmt: skip
@click.option(
    "--accounts", "account_counts", multiple=True, metavar="ARCHETYPE=COUNT",
    help="Accounts of an archetype (repeatable; 0 leaves it out), e.g. --accounts sybil=1.",
)  # fmt: skip
@click.option("--no-report", is_flag=True, help="Skip report.html.")
@friendly_errors
def simulate(
    out_dir: Path,
    data_path: Path | None,
    corr_weight: float,
    mmc_weight: float,
    clip: float,
    payout_factor: float,
    multipliers: str,
    compare: bool,
    account_counts: tuple[str, ...],
    no_report: bool,
    **settings: object,
) -> None:
    """Play a seeded multi-round tournament in the clear and see who gets paid.

    Archetypes: honest models (ridges on feature subsets, trees), an orthogonal model (signal
    the crowd lacks), copycats of the meta model (a realistic one fitted on the published meta
    model of past rounds; an exact oracle copy; its negation), a copy of the largest staked
    model, noise, a noisy copy, sybils, lottery tickets, a high-exposure model and its
    neutralized twin. Stakes follow the payouts round by round (burns included).

    Writes summary.csv (one row per archetype), rounds.csv (round × account), methods.csv,
    method_summary.csv, meta.csv, claims.csv, mmc_forms.csv, config.json and report.html.

    Example (MMC-only): fhe-toolkit simulate --out lab/ --corr-weight 0
    """
    rule = PayoutRule(
        corr_weight=corr_weight, mmc_weight=mmc_weight, clip=clip, payout_factor=payout_factor,
        multipliers=_floats(multipliers),
    )  # fmt: skip
    config = LabConfig(
        data_path=data_path, rule=rule, compare_methods=compare,
        accounts=_accounts(account_counts), **settings,  # type: ignore[arg-type]
    )  # fmt: skip
    with progress_bar("steps") as progress:
        tasks: dict[str, object] = {}

        def tell(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)  # type: ignore[arg-type]

        result = run_lab(config, progress=tell)
    paths = write_lab_outputs(result, out_dir, report=not no_report)
    console.print(f"{result.source}; payout {rule.describe()}; meta model {config.method}")
    shown = result.summary.astype({"accounts": str}).set_index("archetype")
    print_frame(shown, "Per archetype", console)
    if compare:
        print_frame(
            result.methods.set_index("method")[
                ["meta_mean_corr", "copies_sybils_share_of_gains", "gaming_share_of_gains"]
            ],
            "Meta-model methods",
            console,
        )
    seconds = sum(result.seconds.values())
    console.print(
        f"{seconds:.1f} s; wrote {', '.join(p.name for p in paths.values())} to {out_dir}"
    )
