"""What receiving a circuit model's submission costs the fund, per submission, through the CLI.

    python bench_receive.py [--submissions 4] [--rows 20] [--toolkit DIR ...] [--out receive.json]

Set up first, not timed (with this checkout): ``--submissions`` depth-2 decision trees on 5
features, each its own participant, in two rounds of ``--rows`` live rows per toolkit under
test; every bundle run. Then, for each toolkit under test in turn (``--toolkit``: a directory
put on ``PYTHONPATH``, default this checkout; a copy of an older commit measures the code
before), each in fresh processes:

- where a receive's start-up goes: the interpreter alone; importing the CLI; starting the local
  cluster and running one row on it (the engine's first call in a process); what a decryption
  worker imports (``concrete.fhe`` or only ``concrete.compiler``); what decoding imports
  (Concrete ML's quantizers);
- ``fund receive R SUBMISSION`` once per submission of the first round: seconds per submission;
- ``fund receive R SUBMISSION...`` with every submission of the second round in one call (when
  the toolkit's CLI takes several): seconds per submission.

Every part records the load average (1 minute) before and after it: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine  # type: ignore[import-not-found]

from fhe_toolkit.data import SynthConfig, load_tournament, synthesize
from fhe_toolkit.fund import Fund
from fhe_toolkit.participant import compile_model, export_model, run_bundle, train_model
from fhe_toolkit.protocol.signing import create_identity

REPO = Path(__file__).resolve().parent.parent
START_UP = {
    "interpreter": "pass",
    "import the CLI": "import fhe_toolkit.cli",
    "start the local cluster, run one row": (
        "from fhe_toolkit.fhe.engine import run_rows\n"
        "from tests.jobs_for_tests import EchoJob\n"
        "run_rows(EchoJob(), [b'x'], [0], lambda *_: None)"
    ),
    "worker import: concrete.fhe": "import concrete.fhe",
    "worker import: concrete.compiler": "import concrete.compiler",
    "decoding import: Concrete ML's quantizers": (
        "from concrete.ml.quantization.quantizers import UniformQuantizer"
    ),
}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def set_up(root: Path, count: int, rows: int, rounds: list[str]) -> dict[str, list[Path]]:
    """A fund with ``count`` tree models and a submission of each in every round."""
    config = SynthConfig(
        train_eras=10, validation_eras=0, live_eras=1, rows_per_era=rows, n_features=12,
        n_groups=3,
    )  # fmt: skip
    paths = synthesize(root / "data", config)
    train, live = load_tournament(paths["train"]), load_tournament(paths["live"])
    features = [c for c in train.columns if c.startswith("feature_")][:5]
    fund = Fund(root / "fund", root / "keys")
    identities = {}
    for i in range(count):
        name = f"tree{i}"
        model = train_model(
            train, family="decision_tree", features=features, params={"max_depth": 2}, seed=i,
            packed=False,
        )  # fmt: skip
        compile_model(model, train)
        export_model(model, root / name, name)
        identities[name] = root / f"{name}.pem"
        fund.add_participant(f"owner-{i}", create_identity(identities[name]))
        fund.register(root / name / "model_spec.json", participant=f"owner-{i}", stake=1.0)
    submissions: dict[str, list[Path]] = {}
    for round_id in rounds:
        bundles = fund.open_round(round_id, live)
        submissions[round_id] = [
            run_bundle(bundle, root / name, root / round_id / name, identity=identities[name])
            for name, bundle in bundles.items()
        ]
    return submissions


def timed(args: list[str], toolkit: Path, cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(toolkit)}
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:6])}… failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def takes_several(toolkit: Path, root: Path) -> bool:
    help_text = subprocess.run(
        [sys.executable, "-m", "fhe_toolkit.cli", "fund", "receive", "--help"],
        env={**os.environ, "PYTHONPATH": str(toolkit)}, capture_output=True, text=True,
        cwd=root, check=True,
    ).stdout  # fmt: skip
    return "SUBMISSION_DIR..." in help_text


def measure(toolkit: Path, root: Path, one: list[Path], together: list[Path]) -> dict:
    """Start-up parts, then the ``one`` submissions received one per call, then ``together``
    in one call (if the toolkit's CLI takes several)."""
    store = ["--fund-dir", str(root / "fund"), "--keys", str(root / "keys")]
    cli = [sys.executable, "-m", "fhe_toolkit.cli", "fund", "receive"]
    out: dict = {"start_up": {}}
    for label, code in START_UP.items():
        before = load()
        seconds = timed([sys.executable, "-c", code], toolkit, toolkit)
        out["start_up"][label] = {"s": round(seconds, 2), "load_before_after": (before, load())}
        print(json.dumps({label: out["start_up"][label]}), flush=True)
    before = load()
    each = [timed([*cli, sub.parent.name, str(sub), *store], toolkit, root) for sub in one]
    out["one_per_call"] = {
        "s_per_submission": [round(s, 2) for s in each],
        "load_before_after": (before, load()),
    }
    print(json.dumps(out["one_per_call"]), flush=True)
    if takes_several(toolkit, root):
        before = load()
        subs = [str(s) for s in together]
        seconds = timed([*cli, together[0].parent.name, *subs, *store], toolkit, root)
        out["all_in_one_call"] = {
            "submissions": len(subs),
            "s": round(seconds, 2),
            "s_per_submission": round(seconds / len(subs), 2),
            "load_before_after": (before, load()),
        }
        print(json.dumps(out["all_in_one_call"]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[1:]),
    )  # fmt: skip
    parser.add_argument("--submissions", type=int, default=4, help="tree models (and submissions)")
    parser.add_argument("--rows", type=int, default=20, help="live rows of each round")
    parser.add_argument("--toolkit", type=Path, nargs="+", default=[REPO],
                        help="the toolkits under test, each put on PYTHONPATH in turn (default: "
                        "this checkout)")  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    toolkits = [path.resolve() for path in args.toolkit]
    results: dict = {"machine": machine(), "rows": args.rows, "toolkits": {}}
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        rounds = [f"t{i}-{mode}" for i in range(len(toolkits)) for mode in ("one", "all")]
        submissions = set_up(root, args.submissions, args.rows, rounds)
        for i, toolkit in enumerate(toolkits):
            print(toolkit, flush=True)
            results["toolkits"][str(toolkit)] = measure(
                toolkit, root, submissions[f"t{i}-one"], submissions[f"t{i}-all"]
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
