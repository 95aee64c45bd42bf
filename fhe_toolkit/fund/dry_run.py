"""Registration's dry run: a spec is accepted only once the fund has made its keys and encrypted
for it, in a worker process that may crash.

A spec can pass every schema check (:mod:`fhe_toolkit.protocol.client_specs`) and still fail in
Concrete's Rust and C++ at ``open-round``, where a panic (SIGABRT) or running out of memory takes
the whole fund process, and every other model's round, with it. So ``register`` first does what
``open-round`` will do, with the same code, in a separate Python process under limits
(``setrlimit``: data memory and CPU time; a wall-clock timeout; no core dump):

1. generate the key set from the spec's client specs, and serialize it as the key store does;
2. quantize every value a Numerai feature takes (0..4) with the spec's input quantizers, and
   check the integers fit the circuit's input encoding (its bit width and sign);
3. encrypt those rows, ``batch_size`` at a time, as the round bundle does;
4. decode the largest and smallest outputs the circuit's output encoding can carry, and check
   they give ``batch_size`` finite predictions, as ``receive`` will.

Whatever happens in the worker (an exception, a panic, the memory or time limit) is a refusal
naming the step and, for a limit, the limit; the fund process is untouched and nothing is
stored. A small tree's dry run takes about 15 s of CPU (loading Concrete and making the keys,
mostly): 15 s on an idle 2-core machine, about a minute on a busy one.

A packed linear spec has no keys of its own: it is checked in-process against the packed
round's parameters (:func:`~fhe_toolkit.fhe.glwe.choose_params`), for a round of as many
features as a spec may use, so one model's weight bound can never leave a round's other packed
models without parameters.

The worker (:func:`main`, given the limits as arguments and the spec's JSON on stdin) prints one
JSON line as each step starts and a last line with the result.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import fhe_toolkit
from fhe_toolkit.data.schema import FEATURE_VALUES
from fhe_toolkit.errors import DryRunRefusal, FundError, PackedError, SpecError
from fhe_toolkit.fhe.codecs import SpecCodec
from fhe_toolkit.fhe.glwe import choose_params
from fhe_toolkit.fhe.tasks import keygen_and_encrypt
from fhe_toolkit.fund.rounds import ModelRowsOf
from fhe_toolkit.protocol.modelspec import (
    MAX_FEATURES,
    MAX_WEIGHT_BITS,
    AnyModelSpec,
    LinearSpec,
    ModelSpec,
    model_spec_from,
)

DEFAULT_MEMORY_BYTES = 4 << 30
"""The worker's data memory (``RLIMIT_DATA``): Concrete and PyTorch take about 0.7 GB loaded,
the rest is for the keys (a tree's are tens of MB, a training job's 0.7 GB)."""
MIN_MEMORY_BYTES = 256 << 20
DEFAULT_SECONDS = 300.0
"""Wall-clock limit for the whole dry run (a small tree's takes about 15 s)."""
STARTING = "starting the worker"
LOADING = "loading Concrete"
WORKER = "import sys; from fhe_toolkit.fund.dry_run import main; sys.exit(main(sys.argv[1:]))"
"""The worker's program (``-c``: running this module with ``-m`` would import it twice)."""
MEMORY_SIGNS = ("memory allocation of", "bad_alloc", "MemoryError", "Cannot allocate memory")
"""What Rust, C++ and Python print when an allocation fails under the limit."""


@dataclass(frozen=True)
class DryRunLimits:
    """The dry-run worker's limits: data memory in bytes, and wall-clock seconds."""

    memory_bytes: int = DEFAULT_MEMORY_BYTES
    seconds: float = DEFAULT_SECONDS

    def __post_init__(self) -> None:
        if not (isinstance(self.memory_bytes, int) and self.memory_bytes >= MIN_MEMORY_BYTES):
            raise FundError(
                f"the dry run's memory limit must be at least {MIN_MEMORY_BYTES >> 20} MiB, not "
                f"{self.memory_bytes} bytes."
            )
        if not (math.isfinite(self.seconds) and self.seconds > 0):
            raise FundError(
                f"the dry run's time limit must be a positive number of seconds, not "
                f"{self.seconds}."
            )

    def describe_memory(self) -> str:
        return f"{self.memory_bytes / 2**30:g} GiB"


@dataclass(frozen=True)
class DryRunReport:
    """What the dry run did: how long it took in all (worker start included) and per step, in
    seconds, and what it measured."""

    seconds: float
    summary: str
    steps: dict[str, float] = field(default_factory=dict)
    evaluation_key_bytes: int = 0
    ciphertext_bytes: int = 0
    peak_memory_bytes: int = 0


def prove_usable(spec: AnyModelSpec, limits: DryRunLimits | None = None) -> DryRunReport:
    """Refuse (:class:`SpecError`, naming the step and any limit) a spec the fund could not make
    keys for, encrypt for or decode; otherwise say what the dry run measured."""
    if isinstance(spec, LinearSpec):
        return _check_packable(spec)
    return _run_worker(spec, limits or DryRunLimits())


# --- the packed path ----------------------------------------------------------------------------
@cache
def max_packable_weight_bits() -> int:
    """The widest weights for which a packed round of :data:`MAX_FEATURES` features has exact
    parameters."""

    def fits(bits: int) -> bool:
        try:
            choose_params(MAX_FEATURES, 2 ** (bits - 1) - 1)
        except PackedError:
            return False
        return True

    return max(bits for bits in range(2, MAX_WEIGHT_BITS + 1) if fits(bits))


def _check_packable(spec: LinearSpec) -> DryRunReport:
    started = time.perf_counter()
    widest = max_packable_weight_bits()
    if spec.weight_bits > widest:
        raise SpecError(
            f"{spec.KIND} {spec.name!r} was not registered: with {spec.weight_bits}-bit weights "
            f"a packed round of up to {MAX_FEATURES} features (the most a spec may use; the "
            "round encrypts every packed model's features) has no exact parameters, and the "
            "round's other packed models would be left without theirs. Export it with at most "
            f"{widest} weight bits (the toolkit's default is 8)."
        )
    return DryRunReport(
        seconds=time.perf_counter() - started,
        summary=(
            f"{spec.weight_bits}-bit weights fit a packed round of up to {MAX_FEATURES} features"
        ),
    )


# --- the worker, seen from the fund -------------------------------------------------------------
def _run_worker(spec: ModelSpec, limits: DryRunLimits) -> DryRunReport:
    command = [
        sys.executable, "-c", WORKER, str(limits.memory_bytes), repr(float(limits.seconds)),
    ]  # fmt: skip
    # The worker imports this very toolkit, wherever the fund's process found it.
    package_root = str(Path(fhe_toolkit.__file__).resolve().parents[1])
    paths = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    started = time.perf_counter()
    try:
        done = subprocess.run(  # noqa: S603 - this interpreter, this module, numbers as arguments
            command,
            input=spec.to_json().encode(),
            capture_output=True,
            timeout=limits.seconds,
            env=environment,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        step = _last_step(exc.stdout or b"")
        limit = f"the dry run's time limit of {limits.seconds:g} s"
        if step in (STARTING, LOADING):
            raise FundError(
                f"{limit} is too short to start the worker and load Concrete."
            ) from None
        raise _refusal(
            spec, f"{step} did not finish within {limit} (stopped there). If the model "
            "genuinely needs longer, the fund can raise the limit (--dry-run-seconds)."
        ) from None  # fmt: skip
    messages = _messages(done.stdout)
    step = _last_step(done.stdout)
    result = next((m["result"] for m in reversed(messages) if "result" in m), None)
    if result is not None and result.get("ok"):
        measured = {k: v for k, v in result.items() if k != "ok"}
        return DryRunReport(seconds=time.perf_counter() - started, **measured)
    reason = str(result.get("reason", "")) if result else _crash(done)
    errors = done.stderr.decode(errors="replace")
    out_of_memory = any(sign in reason or sign in errors for sign in MEMORY_SIGNS)
    memory = f"the dry run's memory limit of {limits.describe_memory()}"
    if step in (STARTING, LOADING):
        cause = f"{memory} is too small for it" if out_of_memory else reason
        raise FundError(f"the dry run could not start the worker and load Concrete: {cause}.")
    if out_of_memory:
        keys = spec.client_specs.evaluation_key_bytes / 2**20
        raise _refusal(
            spec, f"{step} ran out of memory under {memory} ({keys:,.0f} MiB of evaluation "
            "keys). If the model genuinely needs more, the fund can raise the limit "
            "(--dry-run-memory)."
        )  # fmt: skip
    if done.returncode == -signal.SIGXCPU:
        raise _refusal(
            spec, f"{step} used up the dry run's CPU time ({limits.seconds:g} s per core). If "
            "the model genuinely needs longer, the fund can raise the limit (--dry-run-seconds)."
        )  # fmt: skip
    if result is not None:
        raise _refusal(spec, f"{step} failed: {reason}.")
    raise _refusal(
        spec, f"{step} crashed the worker process ({reason}). Opening a round would crash the "
        "same way."
    )  # fmt: skip


def _refusal(spec: ModelSpec, reason: str) -> SpecError:
    return SpecError(
        f"{spec.KIND} {spec.name!r} failed the fund's dry run and was not registered: {reason}"
    )


def _crash(done: subprocess.CompletedProcess[bytes]) -> str:
    """How the worker died, and the last lines it wrote (a Rust panic's message, say)."""
    code = done.returncode
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    lines = [
        line.strip()
        for line in done.stderr.decode(errors="replace").splitlines()
        if line.strip() and not line.startswith("note:")
    ]
    said = " ".join(lines[-2:])[-300:] or "no message"
    return f"{how}: {said}"


def _messages(stdout: bytes) -> list[dict[str, Any]]:
    """The worker's JSON lines (anything else a library printed is skipped)."""
    found = []
    for line in stdout.decode(errors="replace").splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            found.append(message)
    return found


def _last_step(stdout: bytes) -> str:
    steps = [m["step"] for m in _messages(stdout) if isinstance(m.get("step"), str)]
    return steps[-1] if steps else STARTING


# --- the worker itself --------------------------------------------------------------------------
def _limit(memory_bytes: int, seconds: float) -> None:
    """This process's own limits: no core dump, data memory, CPU time on every core (SIGXCPU
    at the limit, SIGKILL a few seconds later)."""

    def lower(kind: int, soft: int, hard: int) -> None:
        _, current = resource.getrlimit(kind)
        if current != resource.RLIM_INFINITY:
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(kind, (soft, hard))

    cpu = math.ceil(seconds) * (os.cpu_count() or 1)
    lower(resource.RLIMIT_CORE, 0, 0)
    lower(resource.RLIMIT_DATA, memory_bytes, memory_bytes)
    lower(resource.RLIMIT_CPU, cpu, cpu + 5)


class _Steps:
    """Announce each step before it starts (a crash leaves the last one on record) and time it."""

    def __init__(self) -> None:
        self.durations: dict[str, float] = {}
        self.current = STARTING

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.current = name
        _say({"step": name})
        started = time.perf_counter()
        yield
        self.durations[name] = round(time.perf_counter() - started, 3)


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _exercise(spec: ModelSpec, steps: _Steps) -> dict[str, Any]:
    """Do what ``open-round`` and ``receive`` do with the spec, on made-up rows."""
    with steps.step(LOADING):
        import concrete.fhe  # noqa: F401  (loaded here: its time and memory are this step's)

        codec = SpecCodec(spec)  # Concrete ML's quantizers
    circuit = spec.client_specs.circuit
    with steps.step("quantizing feature values"):
        low, high = FEATURE_VALUES
        values = np.arange(low, high + 1)
        rows = pd.DataFrame(
            np.repeat(values[:, None], len(spec.features), axis=1).astype(np.int8),
            columns=spec.features,
            index=pd.Index([f"value-{v}" for v in values], name="id"),
        )
        quantized = codec.quantize(rows.to_numpy(np.float32))
        encoding = circuit.inputs[0].encoding
        smallest, largest = encoding.bounds
        if quantized.min() < smallest or quantized.max() > largest:
            raise DryRunRefusal(
                f"the input quantizers turn feature values {low}..{high} into "
                f"{quantized.min()}..{quantized.max()}, but the circuit takes "
                f"{encoding.describe()}"
            )
    with steps.step("key generation and encrypting a batch"):
        # What open-round's task does for the model: the same keys, the same encryption.
        encrypted = keygen_and_encrypt(ModelRowsOf([spec], {spec.name: codec}, rows)[0])
        evaluation_keys = len(encrypted.evaluation_keys)
        ciphertexts = encrypted.ciphertexts
    with steps.step("decoding outputs"):
        output = circuit.outputs[0]
        for extreme in output.encoding.bounds:
            predictions = codec.decode(np.full(output.shape, extreme, dtype=np.int64))
            finite = int(np.isfinite(predictions).sum())
            if predictions.shape != (spec.batch_size,) or finite != spec.batch_size:
                raise DryRunRefusal(
                    f"decoding the circuit's output of shape {output.shape} (all {extreme}) "
                    f"gives {predictions.size} prediction(s), {finite} finite, not "
                    f"{spec.batch_size} finite ones"
                )
    return {
        "evaluation_key_bytes": evaluation_keys,
        "ciphertext_bytes": sum(len(c) for c in ciphertexts),
        "summary": (
            f"keys made ({evaluation_keys / 2**20:,.1f} MiB of evaluation keys), feature values "
            f"{low}..{high} encrypted as {encoding.describe()}"
        ),
    }


def main(argv: list[str]) -> int:
    """The worker: limit this process, read the spec from stdin, exercise it, say how it went."""
    memory_bytes, seconds = int(argv[0]), float(argv[1])
    _limit(memory_bytes, seconds)
    steps = _Steps()
    try:
        with steps.step("reading the spec"):
            spec = model_spec_from(json.loads(sys.stdin.buffer.read()), "the spec")
            if not isinstance(spec, ModelSpec):
                raise DryRunRefusal("a packed linear spec has no circuit to try")
        measured = _exercise(spec, steps)
    except MemoryError:
        _say({"result": {"ok": False, "reason": f"MemoryError during {steps.current}"}})
        return 1
    except DryRunRefusal as exc:
        _say({"result": {"ok": False, "reason": str(exc)}})
        return 1
    except Exception as exc:
        _say({"result": {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}})
        return 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _say({"result": {"ok": True, "steps": steps.durations, "peak_memory_bytes": peak, **measured}})
    return 0
