"""The public model spec: what the fund needs from a participant's compiled model, as plain data.

A participant's ``client.zip`` carries ``serialized_processing.json``, which Concrete ML decodes
with skops (pickle-like, participant-authored): the fund must never decode it. The spec carries
the same information as validated JSON numbers and strings instead:

- the client crypto specs (Concrete's own JSON: key and ciphertext parameters),
- the input quantizers and the output quantizer (scale, zero point, bits...),
- the family (which fixes the post-processing, see :mod:`fhe_toolkit.families`), the feature
  list, the target, rows per ciphertext, and the package versions it was compiled with.

:class:`SpecCodec` turns a spec into what the fund does with it: quantize feature rows, and turn
decrypted integers into predictions, with Concrete ML's own quantizer arithmetic.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fhe_toolkit.errors import FheToolkitError
from fhe_toolkit.families import FAMILIES, Family, get_family, post_process

MAX_SPEC_BYTES = 2_000_000
MAX_FEATURES = 5_000
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"

Number = Annotated[float, Field(allow_inf_nan=False)]


class SpecError(FheToolkitError, ValueError):
    """A model spec that cannot be registered or used, with the reason."""


class QuantizerSpec(BaseModel):
    """The parameters of one Concrete ML ``UniformQuantizer``: numbers and flags only."""

    model_config = ConfigDict(extra="forbid", strict=True)

    n_bits: int | None = Field(default=None, ge=1, le=32)
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
    def _positive_scale(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if not values or any(v <= 0 for v in values):
            raise ValueError("scale must be positive")
        return value

    @field_validator("zero_point")
    @classmethod
    def _finite_zero_point(cls, value: float | list[Any]) -> float | list[Any]:
        flat = np.asarray(value, dtype=np.float64).ravel()
        if flat.size == 0 or not np.all(np.isfinite(flat)):
            raise ValueError("zero_point must hold finite numbers")
        return value

    def build(self) -> Any:
        """A Concrete ML ``UniformQuantizer`` with these parameters (no decoding of objects)."""
        from concrete.ml.quantization.quantizers import UniformQuantizer

        values = self.model_dump()
        values["scale"] = np.float64(self.scale) if not isinstance(self.scale, list) else (
            np.asarray(self.scale, dtype=np.float64)
        )  # fmt: skip
        values["zero_point"] = (
            np.asarray(self.zero_point, dtype=np.float64)
            if isinstance(self.zero_point, list)
            else self.zero_point
        )
        return UniformQuantizer.load_dict({k: v for k, v in values.items() if v is not None})

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
    """A participant's public, plain-JSON description of a compiled circuit."""

    model_config = ConfigDict(extra="forbid", strict=True)
    KIND: ClassVar[str] = "spec"

    name: str = Field(pattern=NAME_PATTERN)
    target: str = Field(pattern=r"^target(_[A-Za-z0-9_]+)?$")
    features: list[str] = Field(min_length=1, max_length=MAX_FEATURES)
    client_specs: dict[str, Any]
    versions: dict[str, str]

    @field_validator("features")
    @classmethod
    def _feature_names(cls, value: list[str]) -> list[str]:
        bad = [f for f in value if not re.fullmatch(r"feature_[A-Za-z0-9_]{1,120}", f)]
        if bad:
            raise ValueError(f"feature names must look like 'feature_*': {bad[:3]}")
        if len(set(value)) != len(value):
            raise ValueError("features are listed more than once")
        return value

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True)

    def sha256(self) -> str:
        """A digest of the spec's content (key order and whitespace do not matter)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def client_specs_bytes(self) -> bytes:
        return json.dumps(self.client_specs).encode()


class ModelSpec(PublicSpec):
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
        shapes, n_outputs = circuit_shapes(self.client_specs)
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


def circuit_shapes(client_specs: dict[str, Any]) -> tuple[list[list[int]], int]:
    """The encrypted inputs' shapes and the number of outputs, read from Concrete's client specs
    JSON (one circuit is all the toolkit accepts)."""
    try:
        circuits = client_specs["circuits"]
        if len(circuits) != 1:
            raise ValueError("the client specs must describe one circuit")
        shapes = [
            put["typeInfo"]["lweCiphertext"]["abstractShape"]["dimensions"]
            for put in circuits[0]["inputs"]
        ]
        n_outputs = len(circuits[0]["outputs"])
        if not isinstance(client_specs["keyset"], dict):
            raise ValueError("keyset is missing")
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"client_specs are not Concrete client specs ({exc!r} missing)") from None
    for dims in shapes:
        if not (isinstance(dims, list) and all(isinstance(d, int) and d > 0 for d in dims)):
            raise ValueError("client_specs give no valid input shape")
    return shapes, n_outputs


S = TypeVar("S", bound=PublicSpec)


def load_spec(path: str | Path) -> ModelSpec:
    """Read and validate a model spec file."""
    return read_spec(path, ModelSpec)


def read_spec(path: str | Path, spec_type: type[S]) -> S:
    """Read and validate a spec file. Plain JSON only: nothing in it is executed or unpickled."""
    path = Path(path)
    kind = spec_type.KIND
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SpecError(f"{path} does not exist.") from None
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"{path} is {size:,} bytes; a {kind} is at most {MAX_SPEC_BYTES:,}.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"{path} is not JSON text ({exc}); a {kind} is plain JSON.") from None
    return validate_spec(raw, spec_type, str(path))


def validate_spec(raw: object, spec_type: type[S], source: str) -> S:
    """A spec from decoded JSON, every field checked; ``source`` names it in the error."""
    try:
        return spec_type.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'spec'}: {err['msg']}" for err in exc.errors()[:8]
        )
        raise SpecError(f"{source} is not a valid {spec_type.KIND}: {problems}") from None


class SpecCodec:
    """The fund's side of a spec: quantize feature rows, decode decrypted outputs."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.family = spec.family_info
        self.input_quantizers = [q.build() for q in spec.input_quantizers]
        self.output_quantizer = spec.output_quantizer.build()

    def quantize(self, features: np.ndarray) -> np.ndarray:
        """Feature rows (n × n_features) to the circuit's integers, as Concrete ML does.

        The rows are taken as float32, the dtype the participant's model was fit and checked on:
        with NumPy 1.x promotion the quantizer's arithmetic then runs in float32, and values that
        fall on a rounding tie (2 on a 0..4 range at 8 bits) round as they did for the model.
        """
        values = np.asarray(features, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != len(self.spec.features):
            raise SpecError(
                f"expected rows of {len(self.spec.features)} features, got shape {values.shape}."
            )
        if len(self.input_quantizers) == 1:
            return self.input_quantizers[0].quant(values)
        return np.column_stack(
            [q.quant(values[:, i]) for i, q in enumerate(self.input_quantizers)]
        ).astype(np.int64)

    def decode(self, decrypted: np.ndarray) -> np.ndarray:
        """Decrypted integers (rows × outputs) to one prediction per row."""
        return post_process(self.family, self.output_quantizer.dequant(np.asarray(decrypted)))


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
