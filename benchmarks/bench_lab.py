"""The incentive lab's default run: how long `fhe-toolkit simulate` takes. Target: ≤ 60 s on
2 cores.

    python benchmarks/bench_lab.py [--repeats 3] [--rounds 100]

Each repeat runs the whole default lab (synthetic data, training, 100 rounds under each of the
three meta-model methods, the claim figures) and writes every output file and the HTML report
to a temporary directory. Prints wall time and CPU time per repeat and per stage, and the load
average: on a shared machine wall time moves with the neighbours, CPU time much less.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

from common import machine

from fhe_toolkit.lab import LabConfig, run_lab, write_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=LabConfig.rounds)
    args = parser.parse_args()
    config = dataclasses.replace(LabConfig(), rounds=args.rounds)
    print(f"{machine()}; lab default run, {args.rounds} rounds")
    walls = []
    for repeat in range(args.repeats):
        load = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_lab(config)
        with tempfile.TemporaryDirectory() as out:
            write_outputs(result, out)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        walls.append(wall)
        stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in result.seconds.items())
        print(
            f"repeat {repeat + 1}: wall {wall:.1f} s, CPU {cpu:.1f} s (stages: {stages}; "
            f"report and files {wall - sum(result.seconds.values()):.1f}); load {load:.1f}"
        )
    print(f"best wall {min(walls):.1f} s, worst {max(walls):.1f} s (target ≤ 60 s)")


if __name__ == "__main__":
    main()
