"""The public model spec: what the fund needs from a participant's compiled model, as plain data.

A participant's ``client.zip`` carries ``serialized_processing.json``, which Concrete ML decodes
with skops (pickle-like, participant-authored): the fund must never decode it. The spec carries
the same information as validated JSON numbers and strings instead:

- the client crypto specs (Concrete's own JSON: key and ciphertext parameters),
- the input quantizers and the output quantizer (scale, zero point, bits...),
- the family (which fixes the post-processing, see :mod:`fhe_toolkit.protocol.families`), the
  feature list, the target, rows per ciphertext, and the package versions it was compiled with;
- optionally, the neutralization the fund applies to the decrypted predictions before scoring
  (:class:`Neutralization`).

:class:`fhe_toolkit.fhe.codecs.SpecCodec` turns a spec into what the fund does with it: quantize
feature rows, and turn decrypted integers into predictions, with Concrete ML's own arithmetic.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from fhe_toolkit.errors import SpecError
from fhe_toolkit.protocol.client_specs import ClientSpecs
from fhe_toolkit.protocol.families import FAMILIES, Family, get_family
from fhe_toolkit.protocol.files import read_regular

MAX_SPEC_BYTES = 2_000_000
MAX_FEATURES = 5_000
MAX_WEIGHT_BITS = 16
MAX_QUANTIZER_BITS = 16
"""Concrete's widest table lookup; far finer than the five values of a Numerai feature."""
SCALE_RANGE = (2.0**-60, 2.0**60)
MAX_ZERO_POINT = 2.0**53
ZERO_POINT_DEPTH = 2
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"

Number = Annotated[float, Field(allow_inf_nan=False)]


class QuantizerSpec(BaseModel):
    """The parameters of one Concrete ML ``UniformQuantizer``: numbers and flags only, each in
    a range where quantized values stay exact 64-bit integers."""

    model_config = ConfigDict(extra="forbid", strict=True)

    n_bits: int | None = Field(default=None, ge=1, le=MAX_QUANTIZER_BITS)
    is_signed: bool | None = None
    is_symmetric: bool | None = None
    is_narrow: bool | None = None
    is_qat: bool | None = None
    is_precomputed_qat: bool | None = None
    no_clipping: bool = False
    scale: Number | list[Number]
    zero_point: Number | list[Any]
    offset: int = Field(ge=0, le=2**31)
    rmin: Number | None = None
    rmax: Number | None = None

    @field_validator("scale")
    @classmethod
    def _sane_scale(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if not values or any(v <= 0 for v in values):
            raise ValueError("scale must be positive")
        low, high = SCALE_RANGE
        wild = [v for v in values if not low <= v <= high]
        if wild:
            raise ValueError(
                f"scale {wild[0]:g} is outside [2**-60, 2**60]: quantized values would not "
                "stay 64-bit integers (Concrete ML's scales are far inside)"
            )
        return value

    @field_validator("zero_point")
    @classmethod
    def _sane_zero_point(cls, value: float | list[Any]) -> float | list[Any]:
        if not _numbers_only(value, ZERO_POINT_DEPTH):
            raise ValueError(
                "zero_point must hold finite numbers only: a number, or lists of numbers at "
                f"most {ZERO_POINT_DEPTH} deep"
            )
        try:
            flat = np.asarray(value, dtype=np.float64).ravel()
        except ValueError:
            raise ValueError("zero_point's lists must all have the same length") from None
        if flat.size == 0 or flat.size > MAX_FEATURES or not np.all(np.isfinite(flat)):
            raise ValueError(f"zero_point must hold finite numbers (1 to {MAX_FEATURES} of them)")
        if np.any(np.abs(flat) > MAX_ZERO_POINT):
            raise ValueError("zero_point must be within ±2**53 (exact in a float)")
        return value

    @model_validator(mode="after")
    def _ordered_range(self) -> QuantizerSpec:
        if self.rmin is not None and self.rmax is not None and self.rmin > self.rmax:
            raise ValueError(f"rmin {self.rmin} is above rmax {self.rmax}")
        return self

    @classmethod
    def from_quantizer(cls, quantizer: Any) -> QuantizerSpec:
        raw = quantizer.dump_dict()
        clean = {
            key: _plain(value)
            for key, value in raw.items()
            if key in cls.model_fields and value is not None
        }
        return cls.model_validate(clean, strict=False)


class PublicSpec(BaseModel):
    """What every public spec holds: a name, the target and features, and the versions of the
    packages it was made with."""

    model_config = ConfigDict(extra="forbid", strict=True)
    KIND: ClassVar[str] = "spec"

    name: str = Field(pattern=NAME_PATTERN)
    target: str = Field(pattern=r"^target(_[A-Za-z0-9_]+)?$")
    features: list[str] = Field(min_length=1, max_length=MAX_FEATURES)
    versions: dict[str, str]

    @field_validator("features")
    @classmethod
    def _feature_names(cls, value: list[str]) -> list[str]:
        return _checked_feature_names(value)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True)

    def sha256(self) -> str:
        """A digest of the spec's content (key order and whitespace do not matter)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


FUND_FEATURE_SETS = {
    "model": "the model's own features",
    "all": "every feature of the round's live data",
}
"""Neutralization feature sets the fund resolves itself, with what each means."""


class Neutralization(BaseModel):
    """Neutralization a model declares: after decrypting its predictions, the fund subtracts
    ``proportion`` of their least-squares fit on the neutralization features (and 1s), era by
    era, and scores and pays on the result.

    A participant never sees its live predictions, so it cannot neutralize them itself. Being
    part of the spec, the declaration is covered by the spec's digest, which the fund's bundle
    and the participant's submission both sign.

    The features: ``feature_set`` ``"model"`` or ``"all"`` (:data:`FUND_FEATURE_SETS`: the fund
    resolves them against the round's live data); or an explicit ``features`` list, with
    ``feature_set`` then only naming where the list came from (e.g. a features.json set).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    proportion: Number = Field(ge=0, le=1)
    feature_set: str | None = Field(default=None, pattern=NAME_PATTERN)
    features: list[str] | None = Field(default=None, min_length=1, max_length=MAX_FEATURES)

    @field_validator("features")
    @classmethod
    def _feature_names(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _checked_feature_names(value)

    @model_validator(mode="after")
    def _one_source(self) -> Neutralization:
        if self.features is None and self.feature_set not in FUND_FEATURE_SETS:
            raise ValueError(
                f"name the features: feature_set {sorted(FUND_FEATURE_SETS)} (resolved by the "
                f"fund), or an explicit features list, not feature_set {self.feature_set!r} alone"
            )
        if self.features is not None and self.feature_set in FUND_FEATURE_SETS:
            raise ValueError(
                f"feature_set {self.feature_set!r} is resolved by the fund; give it without a "
                "features list, or name the list otherwise"
            )
        return self

    def neutralizers(self, model_features: Sequence[str], columns: Sequence[str]) -> list[str]:
        """The features to neutralize against, all of them among ``columns`` (the data's);
        ``model_features``: the model's own."""
        if self.features is None:
            if self.feature_set == "model":
                return list(model_features)
            return [c for c in map(str, columns) if c.startswith("feature_")]
        absent = sorted(set(self.features).difference(map(str, columns)))
        if absent:
            raise SpecError(
                f"the data lacks {len(absent)} of the {len(self.features)} features the spec "
                f"neutralizes against (e.g. {absent[:3]}); neutralize against features the "
                "round's live data has (or feature_set 'model' / 'all')."
            )
        return list(self.features)

    def describe(self) -> str:
        """What is removed, e.g. ``50% of their fit on the model's own features``."""
        if self.features is None:
            against = FUND_FEATURE_SETS[str(self.feature_set)]
        else:
            named = f" (set {self.feature_set!r})" if self.feature_set else ""
            against = f"{len(self.features)} listed features{named}"
        return f"{self.proportion:.0%} of their fit on {against}"


class DeclaresNeutralization(BaseModel):
    """The part of a model spec that says how the fund treats its decrypted predictions."""

    model_config = ConfigDict(extra="forbid", strict=True)

    neutralization: Neutralization | None = None

    @model_serializer(mode="wrap")
    def _without_undeclared(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out when not declared: a spec written before the field existed keeps its digest.
        data: dict[str, Any] = handler(self)
        if self.neutralization is None:
            data.pop("neutralization", None)
        return data


class CircuitSpec(PublicSpec):
    """A public spec of a compiled Concrete circuit: the fund makes keys from its client specs
    (a closed schema, :class:`~fhe_toolkit.protocol.client_specs.ClientSpecs`)."""

    client_specs: ClientSpecs

    def client_specs_bytes(self) -> bytes:
        return json.dumps(self.client_specs.model_dump(mode="json")).encode()

    def circuit_shapes(self) -> tuple[list[list[int]], int]:
        """The encrypted inputs' shapes and the number of outputs."""
        circuit = self.client_specs.circuit
        return [gate.shape for gate in circuit.inputs], len(circuit.outputs)


class ModelSpec(CircuitSpec, DeclaresNeutralization):
    """Everything the fund needs to encrypt for, and decode the outputs of, one compiled model."""

    KIND: ClassVar[str] = "model spec"

    format: Literal["fhe-toolkit/model-spec"] = "fhe-toolkit/model-spec"
    format_version: Literal[1] = 1
    family: str
    batch_size: int = Field(ge=1, le=1024)
    input_quantizers: list[QuantizerSpec] = Field(min_length=1, max_length=MAX_FEATURES)
    output_quantizer: QuantizerSpec

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in FAMILIES:
            raise ValueError(f"unknown family {value!r}; known: {sorted(FAMILIES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if len(self.input_quantizers) not in (1, len(self.features)):
            raise ValueError(
                f"input_quantizers must hold 1 (shared) or {len(self.features)} (one per "
                f"feature) quantizers, not {len(self.input_quantizers)}"
            )
        shapes, n_outputs = self.circuit_shapes()
        if len(shapes) != 1 or n_outputs != 1:
            raise ValueError("the circuit must take one input and give one output")
        shape = shapes[0]
        if shape != [self.batch_size, len(self.features)]:
            raise ValueError(
                f"the circuit takes inputs of shape {shape}, but the spec declares "
                f"{self.batch_size} row(s) of {len(self.features)} features"
            )
        return self

    @property
    def family_info(self) -> Family:
        return get_family(self.family)


class LinearSpec(PublicSpec, DeclaresNeutralization):
    """A linear model that runs on the round's packed (GLWE) encryption of the live features.

    The participant's integer weights ``w`` (one per feature, ``|w| <= weight_bound``) stay with
    the participant; the fund decrypts ``x · w`` for each live row ``x`` (feature values 0..4),
    checks that it is exactly that, and predicts ``post_process(scale · (x · w) + intercept)``
    (``post_process`` by family: identity, or the sigmoid for ``logistic``).
    """

    KIND: ClassVar[str] = "linear model spec"

    format: Literal["fhe-toolkit/linear-spec"] = "fhe-toolkit/linear-spec"
    format_version: Literal[1] = 1
    family: str
    weight_bits: int = Field(ge=2, le=MAX_WEIGHT_BITS)
    """Signed weights of this many bits: ``|w| <= 2**(weight_bits - 1) - 1``."""
    # Bounds far outside what training gives (a scale near 1e-4, an intercept near 0.5), but
    # tight enough that scale · (x · w) + intercept is finite and not swamped by the intercept:
    # otherwise the fund would retire the keys for predictions that are infinite or constant.
    scale: Number = Field(ge=1e-12, le=1e6)
    intercept: Number = Field(ge=-1e6, le=1e6)

    @field_validator("family")
    @classmethod
    def _linear_family(cls, value: str) -> str:
        if value not in FAMILIES or not FAMILIES[value].packable:
            packable = sorted(name for name, family in FAMILIES.items() if family.packable)
            raise ValueError(f"a linear spec's family is one of {packable}, not {value!r}")
        return value

    @property
    def weight_bound(self) -> int:
        return int(2 ** (self.weight_bits - 1) - 1)

    @property
    def family_info(self) -> Family:
        return get_family(self.family)


AnyModelSpec = ModelSpec | LinearSpec
"""A model spec of either path: a compiled circuit with its own keys, or packed linear."""


def _checked_feature_names(value: list[str]) -> list[str]:
    bad = [f for f in value if not re.fullmatch(r"feature_[A-Za-z0-9_]{1,120}", f)]
    if bad:
        raise ValueError(f"feature names must look like 'feature_*': {bad[:3]}")
    if len(set(value)) != len(value):
        raise ValueError("features are listed more than once")
    return value


S = TypeVar("S", bound=PublicSpec)


def load_spec(path: str | Path) -> AnyModelSpec:
    """Read and validate a model spec file of either kind (its ``format`` says which)."""
    data = read_regular(path, MAX_SPEC_BYTES, "a model spec", SpecError)
    return model_spec_from(_decode(data, path, "model spec"), str(path))


def model_spec_from(raw: object, source: str) -> AnyModelSpec:
    """A model spec of the kind its ``format`` names, from decoded JSON."""
    is_linear = (
        isinstance(raw, dict) and raw.get("format") == LinearSpec.model_fields["format"].default
    )
    spec_type: type[AnyModelSpec] = LinearSpec if is_linear else ModelSpec
    return validate_spec(raw, spec_type, source)


def read_spec(path: str | Path, spec_type: type[S]) -> S:
    """Read and validate a spec file. Plain JSON only: nothing in it is executed or unpickled."""
    kind = spec_type.KIND
    data = read_regular(path, MAX_SPEC_BYTES, f"a {kind}", SpecError)
    return validate_spec(_decode(data, path, kind), spec_type, str(path))


def _decode(data: bytes, path: str | Path, kind: str) -> object:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"{path} is not JSON text ({exc}); a {kind} is plain JSON.") from None
    except RecursionError:
        raise SpecError(f"{path} nests too deeply to be a {kind}.") from None


def validate_spec(raw: object, spec_type: type[S], source: str) -> S:
    """A spec from decoded JSON, every field checked; ``source`` names it in the error."""
    if not isinstance(raw, dict):
        raise SpecError(
            f"{source} is not a valid {spec_type.KIND}: it holds a JSON {_json_type(raw)}, not "
            "an object. Send the spec as `fhe-toolkit participant train` wrote it."
        )
    try:
        return spec_type.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(
            f"{source} is not a valid {spec_type.KIND}: {problems_of(exc)}. Send the spec as "
            "`fhe-toolkit participant train` wrote it."
        ) from None


def problems_of(exc: ValidationError, most: int = 8) -> str:
    """The first ``most`` problems of a validation, each as ``field.path: what is wrong``."""
    return "; ".join(
        f"{'.'.join(map(str, err['loc'])) or 'spec'}: {err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors()[:most]
    )


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _numbers_only(value: object, depth: int) -> bool:
    """``value`` is a number (not a bool), or lists of numbers at most ``depth`` deep."""
    if isinstance(value, list):
        return depth > 0 and all(_numbers_only(item, depth - 1) for item in value)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays as JSON-ready Python numbers and lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    return value
