"""Concrete's client specs as a closed schema: every field known and typed, every number in the
range Concrete 2.10 (under Concrete ML 1.9) produces at 128-bit security.

A circuit spec carries Concrete's ``client.specs.json``: its ``ProgramInfo`` (the Cap'n Proto
schema ``concrete-protocol.capnp``, as JSON) plus concrete-python's ``tfhers_specs``. The fund
generates keys from it and encrypts under it, in Rust and C++ that abort the whole process on
parameters they do not expect (an LWE dimension of 0 is a panic, SIGABRT). So nothing a
participant writes reaches that code unless it has the shape and the values Concrete itself
would have written:

- the structure is the protocol's, field by field; an unknown field is refused by its name, and
  a free-form object has nowhere to go;
- only what Concrete generates for the toolkit's circuits: binary keys, 64-bit integers, the
  native modulus, native integer encodings, encrypted inputs and outputs, no TFHE-rs interop;
- dimensions, decomposition parameters and bit widths within the optimizer's search space
  (``concrete-optimizer/src/global_parameters.rs``), every id pointing at a key of the right
  dimension, every shape the one its encryption implies;
- every noise variance the one Concrete's security curve
  (``concrete-security-curves``, ``Security.cpp``) gives the key's dimension: at least the
  128-bit value (less noise is less security), at most the 132-bit one;
- sizes the fund can carry: the evaluation keys of one key set and one batch's ciphertext.

Pure data checks: nothing here imports Concrete. The fund's dry run at registration
(:mod:`fhe_toolkit.fund.dry_run`) then proves the keys can be made and a row encrypted.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MIN_LWE_DIMENSION = 512
"""The optimizer's smallest LWE dimension (its ``free_glwe`` and ``free_lwe`` domains)."""
MAX_LWE_DIMENSION = 1 << 20
"""The optimizer's largest levelled-only LWE dimension (``free_lwe``)."""
GLWE_DIMENSIONS = (1, 6)
POLYNOMIAL_SIZES = tuple(1 << log for log in range(8, 18))
MAX_DECOMPOSITION_BITS = 64
"""levelCount × baseLog: a decomposition of a 64-bit integer."""
MAX_ENCODED_WIDTH = 63
"""A native encoding keeps one padding bit of the 64-bit torus."""
MAX_KEYS = 64
MAX_GATES = 8
MAX_RANK = 8
MAX_EVALUATION_KEY_BYTES = 4 << 30
"""The evaluation keys of one key set, as published in every round bundle: about five times a
compiled training job's (~0.75 GB), the largest the toolkit's families make."""
MAX_CIPHERTEXT_BYTES = 256 << 20
"""One encrypted input or output of one circuit call (one batch of rows)."""
CIRCUIT_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"

SECURITY_CURVES = {
    128: (-0.025696778711484593, 2.675931372549016),
    132: (-0.024891456582633045, 2.65734593837534),
}
"""Concrete's security curves for binary keys (bits: slope, bias of log2 of the noise's
standard deviation against the dimension)."""
VARIANCE_TOLERANCE = 1e-9
"""Concrete computes variances in double precision from the curve: equal up to rounding."""

Dimension = Annotated[int, Field(ge=MIN_LWE_DIMENSION, le=MAX_LWE_DIMENSION)]
KeyId = Annotated[int, Field(ge=0, lt=MAX_KEYS)]
Level = Annotated[int, Field(ge=1, le=MAX_DECOMPOSITION_BITS)]
Variance = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
Storage = Literal[64]
"""Concrete stores every ciphertext and key in 64-bit integers."""


def curve_variance(security_bits: int, dimension: int) -> float:
    """The encryption noise variance Concrete uses for a key of ``dimension`` coefficients at
    ``security_bits`` (as ``SecurityCurve::getVariance`` in Concrete's ``Security.cpp``, for a
    64-bit modulus)."""
    slope, bias = SECURITY_CURVES[security_bits]
    secure = 2.0 ** (2 * (slope * dimension + bias))
    floor = 2.0 ** (-2 * (64 - 2))
    return secure + floor if security_bits == 132 else max(secure, floor)


def variance_problem(variance: float, dimension: int, what: str) -> str | None:
    """Why ``variance`` is not what Concrete sets for a key of ``dimension``, or None."""
    low = curve_variance(128, dimension) * (1 - VARIANCE_TOLERANCE)
    high = curve_variance(132, dimension) * (1 + VARIANCE_TOLERANCE)
    if low <= variance <= high:
        return None
    return (
        f"{what}: variance {variance:.6g} is outside [{low:.6g}, {high:.6g}], what Concrete's "
        f"security curves give a key of dimension {dimension} (less noise is under 128-bit "
        "security)"
    )


class _Closed(BaseModel):
    """A protocol structure: these fields, these types, nothing else. Field names are
    Concrete's own (camelCase), as its JSON spells them."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Empty(_Closed):
    """A Cap'n Proto union member without fields (``{}``)."""


class NativeChoice(_Closed):
    """The one union member Concrete uses here: ``{"native": {}}``."""

    native: Empty


class Modulus(_Closed):
    modulus: NativeChoice


class Shape(_Closed):
    dimensions: list[Annotated[int, Field(ge=1, le=2**32 - 1)]] = Field(max_length=MAX_RANK)


class LweSecretKeyParams(_Closed):
    lweDimension: Dimension
    integerPrecision: Storage
    keyType: Literal["binary"]


class LweSecretKeyInfo(_Closed):
    id: KeyId
    params: LweSecretKeyParams


class _EvaluationKeyParams(_Closed):
    """What every evaluation key's parameters hold: a decomposition, its noise, its storage."""

    levelCount: Level
    baseLog: Level
    variance: Variance
    integerPrecision: Storage
    inputLweDimension: Dimension
    modulus: Modulus
    keyType: Literal["binary"]

    @property
    def output_dimension(self) -> int:
        """The dimension of the secret key it leads to (its variance is that key's)."""
        raise NotImplementedError

    @model_validator(mode="after")
    def _decomposition(self) -> _EvaluationKeyParams:
        if self.levelCount * self.baseLog > MAX_DECOMPOSITION_BITS:
            raise ValueError(
                f"levelCount × baseLog is {self.levelCount * self.baseLog}, over the "
                f"{MAX_DECOMPOSITION_BITS} bits of a 64-bit integer"
            )
        return self


class LweBootstrapKeyParams(_EvaluationKeyParams):
    glweDimension: int = Field(ge=GLWE_DIMENSIONS[0], le=GLWE_DIMENSIONS[1])
    polynomialSize: int

    @property
    def output_dimension(self) -> int:
        return self.glweDimension * self.polynomialSize

    @field_validator("polynomialSize")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value not in POLYNOMIAL_SIZES:
            raise ValueError(
                f"polynomialSize must be a power of two from {POLYNOMIAL_SIZES[0]} to "
                f"{POLYNOMIAL_SIZES[-1]}, not {value}"
            )
        return value


class LweKeyswitchKeyParams(_EvaluationKeyParams):
    outputLweDimension: Dimension

    @property
    def output_dimension(self) -> int:
        return self.outputLweDimension


class PackingKeyswitchKeyParams(LweBootstrapKeyParams):
    """The packing keyswitch key's parameters: a bootstrap key's, plus an inner dimension."""

    innerLweDimension: Dimension


class _EvaluationKeyInfo(_Closed):
    """An evaluation key: from which secret key to which, and whether it is seeded."""

    id: KeyId
    inputId: KeyId
    outputId: KeyId
    params: _EvaluationKeyParams
    compression: Literal["none", "seed"]


class LweBootstrapKeyInfo(_EvaluationKeyInfo):
    params: LweBootstrapKeyParams


class LweKeyswitchKeyInfo(_EvaluationKeyInfo):
    params: LweKeyswitchKeyParams


class PackingKeyswitchKeyInfo(LweBootstrapKeyInfo):
    params: PackingKeyswitchKeyParams


class KeysetInfo(_Closed):
    lweSecretKeys: list[LweSecretKeyInfo] = Field(min_length=1, max_length=MAX_KEYS)
    lweBootstrapKeys: list[LweBootstrapKeyInfo] = Field(max_length=MAX_KEYS)
    lweKeyswitchKeys: list[LweKeyswitchKeyInfo] = Field(max_length=MAX_KEYS)
    packingKeyswitchKeys: list[PackingKeyswitchKeyInfo] = Field(max_length=MAX_KEYS)


class RawInfo(_Closed):
    shape: Shape
    integerPrecision: Storage
    isSigned: Literal[False]


class IntegerEncoding(_Closed):
    width: int = Field(ge=1, le=MAX_ENCODED_WIDTH)
    isSigned: bool
    mode: NativeChoice

    @property
    def bounds(self) -> tuple[int, int]:
        """The smallest and largest integer this encoding carries."""
        if self.isSigned:
            return -(2 ** (self.width - 1)), 2 ** (self.width - 1) - 1
        return 0, 2**self.width - 1

    def describe(self) -> str:
        low, high = self.bounds
        kind = "signed" if self.isSigned else "unsigned"
        return f"{self.width}-bit {kind} integers ({low}..{high})"


class EncodingChoice(_Closed):
    integer: IntegerEncoding


class LweCiphertextEncryptionInfo(_Closed):
    keyId: KeyId
    variance: Variance
    lweDimension: Dimension
    modulus: Modulus


class LweCiphertextTypeInfo(_Closed):
    abstractShape: Shape
    concreteShape: Shape
    integerPrecision: Storage
    encryption: LweCiphertextEncryptionInfo
    compression: Literal["none", "seed"]
    encoding: EncodingChoice


class TypeInfo(_Closed):
    lweCiphertext: LweCiphertextTypeInfo


class GateInfo(_Closed):
    """One encrypted input or output of the circuit."""

    rawInfo: RawInfo
    typeInfo: TypeInfo

    @property
    def shape(self) -> list[int]:
        """The shape of the clear values (rows × features for a model's input)."""
        return list(self.typeInfo.lweCiphertext.abstractShape.dimensions)

    @property
    def encoding(self) -> IntegerEncoding:
        return self.typeInfo.lweCiphertext.encoding.integer

    @property
    def size_bytes(self) -> int:
        return 8 * math.prod(self.rawInfo.shape.dimensions)


class CircuitInfo(_Closed):
    inputs: list[GateInfo] = Field(min_length=1, max_length=MAX_GATES)
    outputs: list[GateInfo] = Field(min_length=1, max_length=MAX_GATES)
    name: str = Field(pattern=CIRCUIT_NAME)


NoTfhers = dict[str, list[None]]
"""Per circuit, per input or output: ``null`` (a TFHE-rs value would be described here)."""


class TfhersSpecs(_Closed):
    """concrete-python's TFHE-rs interoperability entries: none in the toolkit's circuits."""

    input_types_per_func: NoTfhers
    output_types_per_func: NoTfhers
    input_shapes_per_func: NoTfhers
    output_shapes_per_func: NoTfhers


class ClientSpecs(_Closed):
    """Concrete's ``client.specs.json`` of a circuit the toolkit accepts (one circuit)."""

    keyset: KeysetInfo
    circuits: list[CircuitInfo]
    tfhers_specs: TfhersSpecs

    @field_validator("circuits", mode="before")
    @classmethod
    def _one_circuit(cls, value: object) -> object:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(f"the client specs must describe one circuit, not {len(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClientSpecs:
        problems = [*self._key_problems(), *self._gate_problems(), *self._tfhers_problems()]
        if problems:
            raise ValueError("; ".join(problems[:5]))
        size = self.evaluation_key_bytes
        if size > MAX_EVALUATION_KEY_BYTES:
            raise ValueError(
                f"the evaluation keys would take {size / 2**30:.1f} GiB, over the "
                f"{MAX_EVALUATION_KEY_BYTES / 2**30:.0f} GiB the fund publishes per key set"
            )
        return self

    @property
    def circuit(self) -> CircuitInfo:
        return self.circuits[0]

    @property
    def evaluation_key_bytes(self) -> int:
        """About the evaluation keys' size as Concrete serializes them (seeded keys carry
        only their bodies)."""
        keyset = self.keyset
        total = 0
        for key in (*keyset.lweBootstrapKeys, *keyset.packingKeyswitchKeys):
            p = key.params
            glwe = p.glweDimension + 1
            masks = 1 if key.compression == "seed" else glwe
            total += p.inputLweDimension * p.levelCount * glwe * masks * p.polynomialSize
        for ksk in keyset.lweKeyswitchKeys:
            q = ksk.params
            width = 1 if ksk.compression == "seed" else q.outputLweDimension + 1
            total += q.inputLweDimension * q.levelCount * width
        return 8 * total

    def _key_problems(self) -> list[str]:
        keyset = self.keyset
        evaluation: dict[str, list[_EvaluationKeyInfo]] = {
            "lweBootstrapKeys": list(keyset.lweBootstrapKeys),
            "lweKeyswitchKeys": list(keyset.lweKeyswitchKeys),
            "packingKeyswitchKeys": list(keyset.packingKeyswitchKeys),
        }
        numbered = {"lweSecretKeys": [key.id for key in keyset.lweSecretKeys]}
        numbered |= {kind: [key.id for key in keys] for kind, keys in evaluation.items()}
        problems = [
            f"keyset.{kind}: ids must be 0..{len(ids) - 1} in order, as Concrete numbers them"
            for kind, ids in numbered.items()
            if ids != list(range(len(ids)))
        ]
        if problems:
            return problems
        dims = [key.params.lweDimension for key in keyset.lweSecretKeys]
        for kind, keys in evaluation.items():
            for i, key in enumerate(keys):
                where, p = f"keyset.{kind}.{i}", key.params
                for role, key_id, dimension in (
                    ("input", key.inputId, p.inputLweDimension),
                    ("output", key.outputId, p.output_dimension),
                ):
                    if key_id >= len(dims):
                        problems.append(
                            f"{where}: {role} key {key_id} does not exist ({len(dims)} secret keys)"
                        )
                    elif dims[key_id] != dimension:
                        problems.append(
                            f"{where}: its {role} dimension {dimension} is not that of secret key "
                            f"{key_id} ({dims[key_id]})"
                        )
                noise = variance_problem(p.variance, p.output_dimension, f"{where}.params")
                problems += [noise] if noise else []
        return problems

    def _gate_problems(self) -> list[str]:
        dims = [key.params.lweDimension for key in self.keyset.lweSecretKeys]
        problems: list[str] = []
        for side in ("inputs", "outputs"):
            for i, gate in enumerate(getattr(self.circuit, side)):
                where = f"circuits.0.{side}.{i}"
                lwe = gate.typeInfo.lweCiphertext
                key = lwe.encryption.keyId
                if key >= len(dims) or dims[key] != lwe.encryption.lweDimension:
                    problems.append(
                        f"{where}: encrypted under key {key}, which is not a secret key of "
                        f"dimension {lwe.encryption.lweDimension}"
                    )
                    continue
                if side == "outputs" and lwe.compression != "none":
                    problems.append(f"{where}: outputs are not compressed (compression none)")
                width = 3 if lwe.compression == "seed" else dims[key] + 1
                expected = [*lwe.abstractShape.dimensions, width]
                if lwe.concreteShape.dimensions != expected:
                    problems.append(
                        f"{where}: concreteShape {lwe.concreteShape.dimensions} is not the "
                        f"abstract shape plus the ciphertext's {width} words ({expected})"
                    )
                if gate.rawInfo.shape.dimensions != lwe.concreteShape.dimensions:
                    problems.append(f"{where}: rawInfo.shape differs from concreteShape")
                if gate.size_bytes > MAX_CIPHERTEXT_BYTES:
                    problems.append(
                        f"{where}: one call's ciphertext would take {gate.size_bytes:,} bytes, "
                        f"over {MAX_CIPHERTEXT_BYTES:,} (compile with compressed input "
                        "ciphertexts, as the toolkit does, or fewer rows per call)"
                    )
                noise = variance_problem(lwe.encryption.variance, dims[key], f"{where}.encryption")
                problems += [noise] if noise else []
        return problems

    def _tfhers_problems(self) -> list[str]:
        circuit = self.circuit
        counts = {"input": len(circuit.inputs), "output": len(circuit.outputs)}
        wrong = [
            field
            for field, entries in self.tfhers_specs.model_dump().items()
            if entries != {circuit.name: [None] * counts[field.split("_", 1)[0]]}
        ]
        if not wrong:
            return []
        return [
            f"tfhers_specs.{wrong[0]} must map the circuit {circuit.name!r} to one null per "
            f"{'input' if wrong[0].startswith('input') else 'output'} (the toolkit's circuits "
            "take and give no TFHE-rs values)"
        ]
