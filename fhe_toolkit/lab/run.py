"""Running the lab end to end, and writing what it found."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from threadpoolctl import threadpool_limits

from fhe_toolkit.lab.claims import claim_figures, mmc_form_agreement
from fhe_toolkit.lab.data import LabData, parquet_data, synthetic_data
from fhe_toolkit.lab.participants import Participants, make_participants
from fhe_toolkit.lab.results import compare_methods, summarize_archetypes
from fhe_toolkit.lab.tournament import LabConfig, Tournament

StageProgress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: stages ``data``, ``models``, ``rounds``, ``checks``."""
MMC_FORM_CASES = 300
FLOAT_FORMAT = "%.6g"


@dataclass(frozen=True)
class LabResult:
    """What one lab run found.

    ``rounds``: the chosen method's rounds (see :class:`~fhe_toolkit.lab.tournament.Played`);
    ``all_rounds`` and ``meta``: every method's rounds and meta-model CORR, with a ``method``
    column; ``summary``: per archetype (:func:`~fhe_toolkit.lab.results.summarize_archetypes`),
    for the chosen method, and ``method_summaries`` the same for every method; ``methods``:
    :func:`~fhe_toolkit.lab.results.compare_methods`; ``claims``:
    :func:`~fhe_toolkit.lab.claims.claim_figures`; ``forms``: the MMC formulations' random cases;
    ``seconds``: wall time of each stage.
    """

    config: LabConfig
    source: str
    accounts: pd.DataFrame
    rounds: pd.DataFrame
    all_rounds: pd.DataFrame
    meta: pd.DataFrame
    summary: pd.DataFrame
    method_summaries: pd.DataFrame
    methods: pd.DataFrame
    claims: pd.DataFrame
    forms: pd.DataFrame
    crowd_features: list[str]
    risky_features: list[str]
    training_regime: int | None
    seconds: dict[str, float]


def load_lab_data(config: LabConfig) -> LabData:
    """The data the config names: ``data_path``'s eras, or synthetic eras."""
    if config.data_path is not None:
        return parquet_data(
            config.data_path, rounds=config.rounds, train_eras=config.train_eras,
            embargo_eras=config.embargo_eras,
        )  # fmt: skip
    return synthetic_data(
        rounds=config.rounds, train_eras=config.train_eras, embargo_eras=config.embargo_eras,
        rows_per_era=config.rows_per_era, n_features=config.n_features, n_groups=config.n_groups,
        noise=config.noise, regime_length=config.regime_length, seed=config.seed,
    )  # fmt: skip


def run_lab(config: LabConfig | None = None, *, progress: StageProgress | None = None) -> LabResult:
    """Generate or load the data, train the participants, play the tournament under the chosen
    combination method (and, with ``compare_methods``, the others), and summarize.

    Seeded: the same config gives the same result. ``progress`` is told of each stage.

    Runs single-threaded (BLAS and OpenMP limited to one thread): the work is many small steps,
    and on a shared machine the trees' OpenMP threads were measured 13 times slower with two
    threads than with one (spinning while another process held the second core).
    """
    with threadpool_limits(limits=1):
        return _run_lab(config or LabConfig(), progress)


def _run_lab(config: LabConfig, progress: StageProgress | None) -> LabResult:
    tell = progress or (lambda stage, done, total: None)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    tell("data", 0, 1)
    data = load_lab_data(config)
    tell("data", 1, 1)
    seconds["data"] = time.perf_counter() - clock

    clock = time.perf_counter()
    tell("models", 0, 1)
    participants: Participants = make_participants(
        data, config.accounts, seed=config.seed, crowd_share=config.crowd_share,
        recent_eras=config.recent_eras,
    )  # fmt: skip
    tell("models", 1, 1)
    seconds["models"] = time.perf_counter() - clock

    clock = time.perf_counter()
    tournament = Tournament(data, participants, config)
    methods = config.methods
    total = len(methods) * len(data.round_eras)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        tell("rounds", done, total)

    played = [tournament.play(m, exposures=(i == 0), progress=step) for i, m in enumerate(methods)]
    seconds["rounds"] = time.perf_counter() - clock

    clock = time.perf_counter()
    tell("checks", 0, 1)
    all_rounds = pd.concat([p.rounds.assign(method=p.method) for p in played], ignore_index=True)
    meta = pd.concat([p.meta.assign(method=p.method) for p in played], ignore_index=True)
    accounts = participants.accounts
    summaries = {p.method: summarize_archetypes(p.rounds, accounts) for p in played}
    method_table = compare_methods(meta, all_rounds)
    forms = mmc_form_agreement(cases=MMC_FORM_CASES, seed=config.seed)
    summary = summaries[config.method]
    claims = claim_figures(summary, played[0].rounds, method_table, forms, data.training_regime())
    tell("checks", 1, 1)
    seconds["checks"] = time.perf_counter() - clock
    return LabResult(
        config=config,
        source=data.source,
        accounts=accounts,
        rounds=played[0].rounds,
        all_rounds=all_rounds,
        meta=meta,
        summary=summary,
        method_summaries=pd.concat(
            [s.assign(method=m) for m, s in summaries.items()], ignore_index=True
        ),
        methods=method_table,
        claims=claims,
        forms=forms,
        crowd_features=participants.crowd_features,
        risky_features=participants.risky_features,
        training_regime=data.training_regime(),
        seconds=seconds,
    )


def write_outputs(
    result: LabResult, out_dir: str | Path, *, report: bool = True
) -> dict[str, Path]:
    """Write the run's files to ``out_dir`` and return their paths by name:

    - ``summary.csv``: one row per archetype (the chosen method), columns exactly
      :data:`~fhe_toolkit.lab.results.SUMMARY_COLUMNS`;
    - ``rounds.csv``: one row per (round, account), long format;
    - ``methods.csv``: one row per combination method; ``method_summary.csv``: the summary
      under every method; ``meta.csv``: the meta model's CORR per round and method;
    - ``claims.csv``: the figures behind each claim; ``mmc_forms.csv``: the random cases;
    - ``config.json``: the settings and the data's description;
    - ``report.html`` (unless ``report=False``): the self-contained report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "summary": result.summary,
        "rounds": result.rounds,
        "methods": result.methods,
        "method_summary": result.method_summaries,
        "meta": result.meta,
        "claims": result.claims,
        "mmc_forms": result.forms,
    }
    paths = {}
    for name, table in tables.items():
        paths[name] = out / f"{name}.csv"
        table.to_csv(paths[name], index=False, float_format=FLOAT_FORMAT)
    settings = asdict(result.config)
    settings["data_path"] = (
        None if result.config.data_path is None else str(result.config.data_path)
    )
    settings["accounts"] = dict(result.config.accounts)
    paths["config"] = out / "config.json"
    paths["config"].write_text(
        json.dumps(
            {"settings": settings, "data": result.source, "seconds": result.seconds}, indent=1
        )
    )
    if report:
        from fhe_toolkit.lab.report import write_lab_report

        paths["report"] = write_lab_report(result, out / "report.html")
    return paths
