"""The public training spec: an encrypted-SGD job as plain data, and what the fund computes from it.

Concrete ML trains a logistic model on encrypted data with ``SGDClassifier(fit_encrypted=True)``:
one compiled circuit performs one SGD step on a batch. Its inputs are the batch's features
``x`` (1 × batch × features), labels ``y`` (1 × batch × 1), and the current ``weights``
(1 × features × 1) and ``bias`` (1 × 1 × 1); its outputs are the new weights and bias. The
circuit is composable, so one step's encrypted outputs are the next step's inputs and nothing is
decrypted in between.

The spec carries what the fund needs to take part, as validated numbers and strings: the client
crypto specs, the quantizers of the four inputs and two outputs, the features, the target and
how it becomes a label, and the job's settings. :func:`plan_batches` draws the initial weights
and every batch's rows exactly as Concrete ML's single-process training does with the same seed,
so the two-role run and Concrete's own can be compared step for step.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fhe_toolkit.protocol.modelspec import CircuitSpec, QuantizerSpec

TRAINING_INPUTS = ("x", "y", "weights", "bias")
TRAINING_OUTPUTS = ("weights", "bias")
MAX_ITERATIONS = 100_000

Number = Annotated[float, Field(allow_inf_nan=False)]


class TrainingSpec(CircuitSpec):
    """An encrypted training job: settings, and the compiled SGD step's public side."""

    KIND: ClassVar[str] = "training spec"

    format: Literal["fhe-toolkit/training-spec"] = "fhe-toolkit/training-spec"
    format_version: Literal[1] = 1
    label_threshold: Number
    """The label is 1 where the target is above this value, else 0."""
    iterations: int | None = Field(default=None, ge=1, le=MAX_ITERATIONS)
    """SGD steps, one batch each (give this or ``epochs``)."""
    epochs: Number | None = Field(default=None, gt=0, le=1000)
    """Passes over the fund's rows, in expectation: ``ceil(epochs · rows / batch_size)`` steps."""
    batch_size: int = Field(ge=1, le=1024)
    parameter_range: list[Number] = Field(min_length=2, max_length=2)
    seed: int = Field(ge=0, le=2**32 - 1)
    fit_intercept: bool
    input_quantizers: list[QuantizerSpec] = Field(min_length=4, max_length=4)
    output_quantizers: list[QuantizerSpec] = Field(min_length=2, max_length=2)

    @model_validator(mode="after")
    def _consistent(self) -> TrainingSpec:
        if (self.iterations is None) == (self.epochs is None):
            raise ValueError("give either iterations or epochs, not both or neither")
        low, high = self.parameter_range
        if not low < high:
            raise ValueError(
                f"parameter_range must be (low, high) with low < high, not {low, high}"
            )
        n, b = len(self.features), self.batch_size
        expected = [[1, b, n], [1, b, 1], [1, n, 1], [1, 1, 1]]
        shapes, n_outputs = self.circuit_shapes()
        if shapes != expected or n_outputs != 2:
            raise ValueError(
                f"the circuit takes inputs of shapes {shapes} and gives {n_outputs} outputs, but "
                f"an SGD step on batches of {b} rows of {n} features takes {expected} "
                "(x, y, weights, bias) and gives 2 (weights, bias)"
            )
        return self

    def iteration_count(self, n_samples: int) -> int:
        """How many SGD steps the job takes on ``n_samples`` rows."""
        if self.iterations is not None:
            return self.iterations
        epochs = self.epochs or 0.0  # set whenever iterations is not (validated)
        return max(1, math.ceil(epochs * n_samples / self.batch_size))


class TrainedWeights(BaseModel):
    """What the fund returns after decrypting a training job's result: plain numbers."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["fhe-toolkit/trained-weights"] = "fhe-toolkit/trained-weights"
    format_version: Literal[1] = 1
    job_id: str
    name: str
    spec_sha256: str
    features: list[str]
    coef: list[Number]
    intercept: Number
    iterations: int
    n_samples: int
    decrypted_at: str

    @model_validator(mode="after")
    def _one_coefficient_per_feature(self) -> TrainedWeights:
        if len(self.coef) != len(self.features):
            raise ValueError(f"{len(self.coef)} coefficients for {len(self.features)} features")
        return self
