"""Packed rounds for linear models: one GLWE encryption of the live rows, many clear weight vectors.

Why this path exists: a linear model is ``X @ W``. Concrete ML's per-model path encrypts the round
once per registered model (keys belong to one circuit). ``concrete-ml-extensions`` multiplies a
GLWE-encrypted matrix by a *clear* integer matrix, so the fund encrypts ``X`` once per round and
every linear participant multiplies that same ciphertext by its own ``W``.

One round::

    fund                                             participant
    params = choose_params(n_features, bound)        (params are public)
    key, ckey = RoundKey.generate(params)
    chunks = encrypt_rows(key, X)        ── chunks + ckey.to_bytes() ──►
                                                     multiply_chunk(ckey, chunk, W)  (per chunk,
                                         ◄── results ──                 any process, any order)
    verifier = LinearVerifier(X, bound)  (once per round: factorizes X)
    Y = decrypt_chunk(key, result, n_rows=...)
    W = verifier.verify(Y)               (exact; refuses anything that is not X @ W)

Exactness: values are encoded in the top ``bits`` bits of a 64-bit torus; decryption rounds and
reads the result modulo ``2**bits`` as signed. ``bits`` is one more than the bit length of the
largest accumulator the declared bounds allow, so honest results never wrap. The remaining risk
is noise: :func:`choose_params` sizes the key switch and the storage moduli so that the
worst-case noise stays 10 standard deviations below the rounding threshold (the library's
default 26-bit output storage does not: measured here, 5 in 8,000 values wrong at 780 features
and weights up to 127, and 40 % wrong at 2,748 features).

Intercept: the participant's product is ``X @ W`` only. A bias (and the quantization scale) is
declared in clear in the model spec and applied by the fund when it dequantizes; being the same
for every row it changes no rank, so CORR and MMC do not depend on it. Keeping it out of the
product keeps the verifier exact and simple: outputs must be ``X @ W`` with no offset.

Security (IND-CPA only; see DESIGN.md §6): the input GLWE (dimension 1, polynomial size 2,048,
binary key, 64-bit modulus) and the packing key-switching key's output GLWE (same dimensions)
use Gaussian noise of standard deviation 2.845e-15 (relative to the modulus), the value tfhe-rs
uses for GLWE of dimension x size 2,048 in its 128-bit parameter sets; rounding the inputs to
``input_storage_bits`` only adds noise. The claim is by reference to those sets, not a fresh
lattice estimate. One key serves every model of the round, so the fund's reaction to each
submission is a decryption oracle under it: a crafted result can make acceptance depend on a bit
of the output key (which, with the public key-switching key, gives the input key). With the
exact verifier and reason-only messages (:class:`VerificationError`) that is at most one bit per
submission, summed over everyone who submits under the key (Sybils included): keep submissions
per key far below its 2,048 bits (cap models per participant, or give each participant its own
key and encryption), keys fresh per round, and publish only aggregates.

Hostile bytes: the library decodes with ``bincode`` and ``unwrap()``; bad bytes raise Rust panics
(``pyo3_runtime.PanicException``, a ``BaseException``), and some well-formed but inconsistent
headers (a huge length or GLWE dimension) abort the whole process on allocation. Every decoder
here therefore checks the whole layout (each length, size and modulus) in NumPy against what the
parameters imply before the library sees the bytes, and turns any panic that remains into
:class:`PackedError`. The library holds the GIL and, with one output column, uses one core:
spread chunks over processes, not threads.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fhe_toolkit.errors import PackedError, VerificationError

SCHEME = "glwe-matmul-v1"
POLYNOMIAL_SIZE = 2048
GLWE_DIMENSION = 1
MODULUS_BITS = 64
NOISE_STD = 2.845267479601915e-15  # relative to 2**64; tfhe-rs's 128-bit value for k * N = 2048
MARGIN_SIGMAS = 10.0  # rounding threshold / worst-case noise std: Gaussian tail ~2**-75 per value
KSK_VARIANCE_FACTOR = 2.0  # measured: the key-switching key's noise variance is twice the model's
MIN_INPUT_STORAGE_BITS = 24
KS_LEVELS = (2, 3, 4)  # each level adds 67 MB of compression key and one key-switch pass
MAX_FEATURES = 1 << 16  # sanity caps: published parameters size every layout check
MAX_WEIGHT_BOUND = 1 << 31


def _round_var(storage_bits: int) -> float:
    """Variance of rounding a 64-bit torus value to ``storage_bits`` bits (0 when not rounded)."""
    return 0.0 if storage_bits >= MODULUS_BITS else 2.0 ** (2 * (MODULUS_BITS - storage_bits)) / 12


def _ks_var(level: int, base_log: int) -> float:
    """Key-switch noise: dropped low bits of each mask coefficient, plus the key's own noise.

    Conservative: every key bit counted as 1 (a binary key has about half).
    """
    n_in = GLWE_DIMENSION * POLYNOMIAL_SIZE
    truncation = n_in * _round_var(base_log * level)
    key_noise = (
        KSK_VARIANCE_FACTOR * n_in * level * 2.0 ** (2 * base_log) / 12
        * (NOISE_STD * 2.0**MODULUS_BITS) ** 2
    )  # fmt: skip
    return truncation + key_noise


def _out_var(storage_bits: int) -> float:
    """Noise of rounding a result GLWE (mask and body) to ``storage_bits`` bits, every key bit 1."""
    return (1 + GLWE_DIMENSION * POLYNOMIAL_SIZE) * _round_var(storage_bits)


def _in_var(n_features: int, weight_bound: int, storage_bits: int) -> float:
    """Input noise carried through ``x @ w`` at the worst ``||w||² = n · bound²``."""
    per_coefficient = _round_var(storage_bits) + (NOISE_STD * 2.0**MODULUS_BITS) ** 2
    return n_features * weight_bound**2 * per_coefficient


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise PackedError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class PackedParams:
    """Everything both sides need to agree on for a packed round; public, published as JSON.

    The first four fields are declared (by the fund, for the round); the rest are chosen from
    them by :func:`choose_params` and are checked again when read back.
    """

    n_features: int
    weight_bound: int
    max_feature: int
    max_outputs: int
    bits: int
    input_storage_bits: int
    ks_base_log: int
    ks_level: int
    output_storage_bits: int

    @property
    def accumulator_bound(self) -> int:
        """The largest ``|x @ w|`` the declared bounds allow."""
        return self.n_features * self.max_feature * self.weight_bound

    @property
    def noise_std_log2(self) -> float:
        """log2 of the worst-case noise standard deviation (absolute, on the 64-bit torus)."""
        var = (
            _in_var(self.n_features, self.weight_bound, self.input_storage_bits)
            + _ks_var(self.ks_level, self.ks_base_log)
            + _out_var(self.output_storage_bits)
        )
        return 0.5 * math.log2(var)

    @property
    def margin_sigmas(self) -> float:
        """Rounding threshold over worst-case noise std (decryption is exact below it)."""
        return 2.0 ** (MODULUS_BITS - 1 - self.bits - self.noise_std_log2)

    @property
    def glwes_per_row(self) -> int:
        return -(-self.n_features // POLYNOMIAL_SIZE)

    @property
    def input_bytes_per_row(self) -> int:
        """Serialized size of one encrypted row (coefficients and headers)."""
        return 8 * _encrypted_row_words(self)

    def output_bytes_per_row(self, n_outputs: int = 1) -> int:
        """Serialized size of one row of a participant's result with ``n_outputs`` columns."""
        return 8 * _result_row_words(self, n_outputs)

    def crypto_params_json(self) -> str:
        """The library's ``MatmulCryptoParameters`` as JSON (its field names, typo included)."""
        return json.dumps(
            {
                "bits_reserved_for_computation": self.bits,
                "glwe_encryption_noise_distribution_stdev": NOISE_STD,
                "encryption_glwe_dimension": GLWE_DIMENSION,
                "polynomial_size": POLYNOMIAL_SIZE,
                "ciphertext_modulus_bit_count": MODULUS_BITS,
                "input_storage_ciphertext_modulus": self.input_storage_bits,
                "packing_ks_level": self.ks_level,
                "packing_ks_base_log": self.ks_base_log,
                "packing_ks_polynomial_size": POLYNOMIAL_SIZE,
                "packing_ks_glwe_dimension": GLWE_DIMENSION,
                "output_storage_ciphertext_modulus": self.output_storage_bits,
                "pks_noise_distrubution_stdev": NOISE_STD,
            }
        )

    def to_json(self) -> str:
        return json.dumps({"scheme": SCHEME, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> PackedParams:
        """Read published parameters; only what :func:`choose_params` would choose is accepted."""
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise PackedError(f"packed-round parameters are not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("scheme") != SCHEME:
            raise PackedError(
                f"packed-round parameters must be a JSON object with scheme {SCHEME}."
            )
        fields = set(cls.__dataclass_fields__)
        if set(data) - {"scheme"} != fields:
            raise PackedError(f"packed-round parameters need exactly the fields {sorted(fields)}.")
        expected = choose_params(
            data["n_features"],
            data["weight_bound"],
            max_feature=data["max_feature"],
            max_outputs=data["max_outputs"],
        )
        if asdict(expected) != {name: data[name] for name in fields}:
            raise PackedError(
                "packed-round parameters differ from what choose_params picks for the same "
                f"declared bounds: expected {expected.to_json()}."
            )
        return expected

    def _library_params(self) -> Any:
        return _fhext().MatmulCryptoParameters.deserialize(self.crypto_params_json())


def choose_params(
    n_features: int, weight_bound: int, *, max_feature: int = 4, max_outputs: int = 1
) -> PackedParams:
    """Crypto parameters for ``X @ W`` with ``0 <= X <= max_feature`` and ``|W| <= weight_bound``.

    Steps: ``bits`` = bit length of ``n_features · max_feature · weight_bound``, plus a sign bit.
    Noise budget: standard deviation at most ``2**(63 - bits) / 10``. Then, cheapest first: the
    fewest key-switch levels (each is 67 MB of compression key and a pass of work), with the base
    that minimises key-switch noise; the fewest input storage bits (the ciphertext everyone
    downloads) that keep the input term within a quarter of the variance budget; the fewest
    output storage bits that fit what is left. GLWE dimension 1, polynomial size 2,048 and the
    noise level are fixed: they carry the security claim (module docstring).
    """
    n_features = _positive_int(n_features, "n_features")
    weight_bound = _positive_int(weight_bound, "weight_bound")
    max_feature = _positive_int(max_feature, "max_feature")
    max_outputs = _positive_int(max_outputs, "max_outputs")
    if n_features > MAX_FEATURES or max_outputs > POLYNOMIAL_SIZE:
        raise PackedError(
            f"at most {MAX_FEATURES} features and {POLYNOMIAL_SIZE} outputs, got {n_features} "
            f"and {max_outputs}."
        )
    if weight_bound > MAX_WEIGHT_BOUND or max_feature > MAX_WEIGHT_BOUND:
        raise PackedError(f"bounds above {MAX_WEIGHT_BOUND} cannot be exact, got {weight_bound}.")
    bits = (n_features * max_feature * weight_bound).bit_length() + 1
    budget = (2.0 ** (MODULUS_BITS - 1 - bits) / MARGIN_SIGMAS) ** 2
    for level in KS_LEVELS:
        ks_var, base_log = min((_ks_var(level, b), b) for b in range(1, MODULUS_BITS // level + 1))
        input_bits = next(
            (
                b
                for b in range(MIN_INPUT_STORAGE_BITS, MODULUS_BITS + 1)
                if _in_var(n_features, weight_bound, b) <= budget / 4
            ),
            None,
        )
        if input_bits is None:
            break  # the input noise alone is too large; more levels will not help
        rest = budget - ks_var - _in_var(n_features, weight_bound, input_bits)
        output_bits = next(
            (b for b in range(bits + 1, MODULUS_BITS + 1) if _out_var(b) <= rest), None
        )
        if output_bits is not None:
            return PackedParams(
                n_features=n_features,
                weight_bound=weight_bound,
                max_feature=max_feature,
                max_outputs=max_outputs,
                bits=bits,
                input_storage_bits=input_bits,
                ks_base_log=base_log,
                ks_level=level,
                output_storage_bits=output_bits,
            )
    raise PackedError(
        f"no exact parameters for {n_features} features, values up to {max_feature} and weights "
        f"up to {weight_bound}: the accumulator needs {bits} bits and the noise of weights that "
        "large does not fit below them. Declare a smaller weight bound (e.g. 8-bit weights)."
    )


# --------------------------------------------------------------------------- library access


def _fhext() -> Any:
    """The extension, imported on first use (choosing parameters and verifying need no FHE)."""
    try:
        import concrete_ml_extensions
    except ImportError as exc:  # pragma: no cover - installed with concrete-ml 1.9
        raise PackedError(f"concrete-ml-extensions is not installed: {exc}") from exc
    return concrete_ml_extensions


@functools.cache
def _private_key_type() -> Any:
    """The library's ``PrivateKey`` class, which it does not export: taken from a toy key.

    The toy parameters (polynomial size 256, one level) make this take milliseconds; the key is
    discarded, only its class (and so its ``deserialize``) is kept.
    """
    fhext = _fhext()
    toy = json.loads(choose_params(1, 1).crypto_params_json())
    toy.update(polynomial_size=256, packing_ks_polynomial_size=256, packing_ks_level=1)
    private, _ = fhext.cpu_create_private_key(
        fhext.MatmulCryptoParameters.deserialize(json.dumps(toy))
    )
    return type(private)


def _call(what: str, function: Any, *args: Any) -> Any:
    """Run a library call; its errors and Rust panics become :class:`PackedError`."""
    try:
        return function(*args)
    except Exception as exc:
        raise PackedError(f"{what} failed in concrete-ml-extensions: {exc}") from exc
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        if type(exc).__name__ != "PanicException":
            raise
        raise PackedError(f"{what} failed in concrete-ml-extensions: {exc}") from exc


# --------------------------------------------------------------------------- layout checks
#
# bincode 1 writes every integer as 8 little-endian bytes (u128 as two words), so each object
# is a sequence of 64-bit words whose every length, size and modulus follows from the params.


def _words(data: Any, what: str) -> np.ndarray:
    if not isinstance(data, bytes | bytearray):
        raise PackedError(f"{what} must be bytes, got {type(data).__name__}.")
    if len(data) == 0 or len(data) % 8:
        raise PackedError(f"{what} has {len(data)} bytes; expected a non-empty multiple of 8.")
    return np.frombuffer(data, dtype="<u8")


def _packed_words(count: int, storage_bits: int) -> int:
    return -(-count * storage_bits // 64)


def _encrypted_glwe_fields(params: PackedParams) -> list[int | None]:
    """One input GLWE: packed coefficients, storage, sizes, seed (free), 64-bit modulus."""
    b, n = params.input_storage_bits, POLYNOMIAL_SIZE
    coefficients: list[int | None] = [None] * _packed_words(n, b)
    return [len(coefficients), *coefficients, b, n, b, GLWE_DIMENSION, n, None, None, 0, 0, 64]


def _encrypted_row_words(params: PackedParams) -> int:
    return 2 + params.glwes_per_row * len(_encrypted_glwe_fields(params))


def _result_glwe_fields(params: PackedParams, bodies: int) -> list[int | None]:
    b = params.output_storage_bits
    length = GLWE_DIMENSION * POLYNOMIAL_SIZE + bodies
    coefficients: list[int | None] = [None] * _packed_words(length, b)
    return [len(coefficients), *coefficients, b, length, GLWE_DIMENSION, POLYNOMIAL_SIZE, bodies,
            0, 0, 64]  # fmt: skip


def _result_bodies(n_outputs: int) -> list[int]:
    full, last = divmod(n_outputs, POLYNOMIAL_SIZE)
    return [POLYNOMIAL_SIZE] * full + ([last] if last else [])


def _result_row_words(params: PackedParams, n_outputs: int) -> int:
    return 1 + sum(len(_result_glwe_fields(params, b)) for b in _result_bodies(n_outputs))


def _check_rows(words: np.ndarray, template: list[int | None], rows: int, what: str) -> None:
    """Compare every fixed word of every row with ``template`` (``None`` = free content)."""
    table = words.reshape(rows, len(template))
    fixed = np.array([i for i, v in enumerate(template) if v is not None])
    expected = np.array([template[i] for i in fixed], dtype=np.uint64)
    bad = np.argwhere(table[:, fixed] != expected)
    if bad.size:
        row, field = (int(v) for v in bad[0])
        raise PackedError(
            f"{what} is malformed: row {row}, header word {int(fixed[field])} is "
            f"{int(table[row, fixed[field]])}, expected {int(expected[field])} for these "
            "parameters."
        )


def _check_encrypted(params: PackedParams, data: Any, n_rows: int | None = None) -> int:
    """Check a serialized encrypted chunk's layout; return its number of rows."""
    what = "encrypted chunk"
    words = _words(data, what)
    glwe = _encrypted_glwe_fields(params)
    row = [params.glwes_per_row, *glwe * params.glwes_per_row, params.n_features]
    rows = int(words[0])
    if rows < 1 or words.size != 1 + rows * len(row) + 2:
        raise PackedError(
            f"{what} has {len(data)} bytes and claims {rows} rows; a chunk of r rows of "
            f"{params.n_features} features has 24 + r x {8 * len(row)} bytes."
        )
    if n_rows is not None and rows != n_rows:
        raise PackedError(f"{what} has {rows} rows, expected {n_rows}.")
    _check_rows(words[1:-2], row, rows, what)
    if int(words[-2]) != rows or int(words[-1]) != params.n_features:
        raise PackedError(
            f"{what} is malformed: its shape trailer is not ({rows}, {params.n_features})."
        )
    return rows


def _check_result(params: PackedParams, data: Any, n_rows: int, n_outputs: int) -> None:
    what = "encrypted result"
    words = _words(data, what)
    bodies = _result_bodies(n_outputs)
    row: list[int | None] = [len(bodies)]
    for count in bodies:
        row += _result_glwe_fields(params, count)
    if words.size != 1 + n_rows * len(row) or int(words[0]) != n_rows:
        raise PackedError(
            f"{what} has {len(data)} bytes and claims {int(words[0])} rows; {n_rows} rows of "
            f"{n_outputs} output(s) have {8 * (1 + n_rows * len(row))} bytes."
        )
    _check_rows(words[1:], row, n_rows, what)


def _check_compression_key(params: PackedParams, data: Any) -> None:
    what = "compression key"
    words = _words(data, what)
    count = (
        GLWE_DIMENSION * POLYNOMIAL_SIZE * params.ks_level * (GLWE_DIMENSION + 1) * POLYNOMIAL_SIZE
    )
    footer = [params.ks_base_log, params.ks_level, GLWE_DIMENSION + 1, POLYNOMIAL_SIZE, 0, 0, 64,
              POLYNOMIAL_SIZE, params.output_storage_bits]  # fmt: skip
    if words.size != count + 1 + len(footer) or int(words[0]) != count:
        raise PackedError(
            f"{what} has {len(data)} bytes; these parameters give {8 * (count + 1 + len(footer))}."
        )
    if [int(v) for v in words[-len(footer) :]] != footer:
        raise PackedError(f"{what} was made for other parameters (its header differs).")


def _check_private_key(data: Any) -> None:
    what = "private key"
    words = _words(data, what)
    size = GLWE_DIMENSION * POLYNOMIAL_SIZE
    if words.size != 2 * (size + 2):
        raise PackedError(f"{what} has {len(data)} bytes; expected {16 * (size + 2)}.")
    for part in (words[: size + 2], words[size + 2 :]):
        if int(part[0]) != size or int(part[-1]) != POLYNOMIAL_SIZE or (part[1:-1] > 1).any():
            raise PackedError(f"{what} is malformed: not two binary keys of {size} coefficients.")


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, eq=False)
class CompressionKey:
    """The public evaluation key participants multiply with (134 MB at two levels)."""

    params: PackedParams
    key: Any

    def to_bytes(self) -> bytes:
        return bytes(_call("serializing the compression key", self.key.serialize))

    @classmethod
    def from_bytes(cls, params: PackedParams, data: bytes) -> CompressionKey:
        _check_compression_key(params, data)
        fhext = _fhext()
        key = _call("reading the compression key", fhext.CpuCompressionKey.deserialize, bytes(data))
        return cls(params, key)


@dataclass(frozen=True, eq=False)
class RoundKey:
    """The fund's secret key for one round. Never leaves the fund; never reused across rounds."""

    params: PackedParams
    key: Any

    @classmethod
    def generate(cls, params: PackedParams) -> tuple[RoundKey, CompressionKey]:
        """A fresh private key and its public compression key (CPU implementation, always)."""
        fhext = _fhext()
        private, compression = _call(
            "key generation", fhext.cpu_create_private_key, params._library_params()
        )
        return cls(params, private), CompressionKey(params, compression)

    def to_bytes(self) -> bytes:
        """The secret key (32,800 bytes): store it like any secret (the fund's key store)."""
        return bytes(_call("serializing the private key", self.key.serialize))

    def output_key_columns(self, n_outputs: int) -> np.ndarray:
        """``(POLYNOMIAL_SIZE, n_outputs)`` uint64: column ``m`` dotted with a result's mask
        gives coefficient ``m`` of mask × key modulo ``X**N + 1`` (the key the compression key
        switches to, the second half of :meth:`to_bytes`)."""
        key = self._output_key
        columns = np.zeros((POLYNOMIAL_SIZE, n_outputs), dtype=np.uint64)
        for m in range(n_outputs):
            columns[: m + 1, m] = key[m::-1]
            columns[m + 1 :, m] = -key[:m:-1]  # negacyclic wrap: X**N = -1, modulo 2**64
        return columns

    @functools.cached_property
    def _output_key(self) -> np.ndarray:
        words = np.frombuffer(self.to_bytes(), dtype="<u8")
        size = GLWE_DIMENSION * POLYNOMIAL_SIZE
        return words[size + 3 : 2 * size + 3].copy()

    @classmethod
    def from_bytes(cls, params: PackedParams, data: bytes) -> RoundKey:
        _check_private_key(data)
        key = _call("reading the private key", _private_key_type().deserialize, bytes(data))
        return cls(params, key)


# --------------------------------------------------------------------------- fund: encrypt


def row_chunks(n_rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of at most ``chunk_rows`` rows covering ``n_rows`` rows."""
    n_rows, chunk_rows = _positive_int(n_rows, "n_rows"), _positive_int(chunk_rows, "chunk_rows")
    return [(start, min(start + chunk_rows, n_rows)) for start in range(0, n_rows, chunk_rows)]


def _features(params: PackedParams, features: Any) -> np.ndarray:
    values = np.asarray(features)
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] != params.n_features:
        raise PackedError(
            f"features must be a (rows, {params.n_features}) matrix, got shape {values.shape}."
        )
    if not np.issubdtype(values.dtype, np.integer):
        raise PackedError(f"features must be integers (e.g. int8 0..4), got dtype {values.dtype}.")
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > params.max_feature:
        raise PackedError(
            f"features must lie in 0..{params.max_feature} (the declared bound), got {low}..{high}."
        )
    return np.ascontiguousarray(values, dtype=np.uint64)


def encrypt_chunk(key: RoundKey, features: Any) -> bytes:
    """Encrypt rows of integer features (0..max_feature) into one serialized chunk."""
    values = _features(key.params, features)
    fhext = _fhext()
    matrix = _call(
        "encryption", fhext.encrypt_matrix, key.key, key.params._library_params(), values
    )
    return bytes(matrix.serialize())


def encrypt_rows(key: RoundKey, features: Any, *, chunk_rows: int = 256) -> list[bytes]:
    """Encrypt a whole feature matrix in chunks of rows, in row order.

    Chunks are independent: a participant runs them on as many processes as it has cores and
    keeps each finished chunk as a checkpoint.
    """
    values = _features(key.params, features)
    return [encrypt_chunk(key, values[a:b]) for a, b in row_chunks(len(values), chunk_rows)]


def check_encrypted_chunk(params: PackedParams, data: bytes) -> int:
    """Number of rows in a serialized chunk, after checking its whole layout."""
    return _check_encrypted(params, data)


# --------------------------------------------------------------------------- participant


def check_weights(params: PackedParams, weights: Any) -> np.ndarray:
    """Weights as an int64 ``(n_features, k)`` matrix, refused unless within declared bounds."""
    values = np.asarray(weights)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != params.n_features or values.shape[1] < 1:
        raise PackedError(
            f"weights must be a vector of {params.n_features} integers or a "
            f"({params.n_features}, k) matrix, got shape {np.asarray(weights).shape}."
        )
    if values.shape[1] > params.max_outputs:
        raise PackedError(
            f"weights have {values.shape[1]} output columns; this round allows "
            f"{params.max_outputs}."
        )
    if not np.issubdtype(values.dtype, np.integer):
        raise PackedError(
            f"weights must be integers (quantized), got dtype {values.dtype}; round and cast them."
        )
    outside = np.argwhere((values < -params.weight_bound) | (values > params.weight_bound))
    if outside.size:  # checked before any cast, so no value can wrap into range
        feature, column = (int(v) for v in outside[0])
        raise PackedError(
            f"weight {int(values[feature, column])} (feature {feature}, output {column}) exceeds "
            f"the declared bound ±{params.weight_bound}."
        )
    return values.astype(np.int64)


def multiply_chunk(
    compression_key: CompressionKey, chunk: bytes, weights: Any, *, rows_per_call: int = 16
) -> bytes:
    """The participant's work: encrypted chunk times clear integer weights, serialized.

    Signed weights travel as two's-complement ``uint64``; the modular arithmetic of the
    ciphertext makes that exact. The library is called on ``rows_per_call`` rows at a time (the
    result is the same, byte for byte): it holds the GIL for a whole call, and a Dask worker
    whose event loop cannot run for tens of seconds, as on a loaded machine, loses its
    connection to the scheduler and is dropped. A call of 16 rows takes 0.1–0.2 s.
    """
    params = compression_key.params
    matrix_w = np.ascontiguousarray(check_weights(params, weights).view(np.uint64))
    rows = _check_encrypted(params, chunk)
    width, n = _encrypted_row_words(params), params.n_features
    words = np.frombuffer(chunk, dtype="<u8")[1 : 1 + rows * width]
    fhext = _fhext()
    results = [np.array([rows], dtype="<u8")]
    for start, stop in row_chunks(rows, _positive_int(rows_per_call, "rows_per_call")):
        # An encrypted matrix is [rows, each row's words, rows, features] (see _check_encrypted).
        header, trailer = (np.array(v, dtype="<u8") for v in ([stop - start], [stop - start, n]))
        piece = np.concatenate([header, words[start * width : stop * width], trailer])
        matrix = _call(
            "reading the encrypted chunk", fhext.EncryptedMatrix.deserialize, piece.tobytes()
        )
        result = _call(
            "encrypted multiplication", fhext.cpu_matrix_multiplication, matrix, matrix_w,
            compression_key.key,
        )  # fmt: skip
        # A result is [rows, each row's words] (see _check_result).
        results.append(np.frombuffer(bytes(result.serialize()), dtype="<u8")[1:])
    return np.concatenate(results).tobytes()


# --------------------------------------------------------------------------- fund: decrypt


def decrypt_chunk(key: RoundKey, result: bytes, *, n_rows: int, n_outputs: int = 1) -> np.ndarray:
    """A participant's result for a chunk of ``n_rows`` rows, as exact signed int64 ``(rows, k)``.

    Each value is rounded to ``bits`` bits and read modulo ``2**bits`` as signed (two's
    complement), which is ``x @ w`` exactly when the bounds held. Decrypted here in NumPy as the
    library does it (tfhe-rs's packed-integer unpacking and compressed-GLWE extraction, GLWE
    decryption, the extension's ``decrypt_glwe`` rounding; tested equal to its
    ``decrypt_matrix`` on real and forged results), but only for the ``n_outputs`` coefficients
    that hold values: the library multiplies whole polynomials, 1–1.5 ms a row, seconds per
    model at Numerai's row counts.
    """
    params = key.params
    n_rows = _positive_int(n_rows, "n_rows")
    n_outputs = _positive_int(n_outputs, "n_outputs")
    if n_outputs > params.max_outputs:
        raise PackedError(f"{n_outputs} outputs requested; this round allows {params.max_outputs}.")
    _check_result(params, result, n_rows, n_outputs)
    # A row: [1 (one GLWE), n (its coefficient words), n words, the header _check_result checked].
    table = np.frombuffer(result, dtype="<u8")[1:].reshape(n_rows, -1)
    storage = params.output_storage_bits
    length = GLWE_DIMENSION * POLYNOMIAL_SIZE + n_outputs
    packed = table[:, 2 : 2 + _packed_words(length, storage)]
    values = _unpack(packed, storage, length) << np.uint64(MODULUS_BITS - storage)
    mask, bodies = values[:, :POLYNOMIAL_SIZE], values[:, POLYNOMIAL_SIZE:]
    phases = bodies - mask @ key.output_key_columns(n_outputs)  # wraps modulo 2**64
    dropped = np.uint64(MODULUS_BITS - params.bits)
    rounded = (phases >> dropped) + ((phases >> (dropped - np.uint64(1))) & np.uint64(1))
    modulus = np.uint64(1) << np.uint64(params.bits)
    reduced = (rounded & (modulus - np.uint64(1))).astype(np.int64)
    return np.where(reduced >= int(modulus) // 2, reduced - int(modulus), reduced)


def _unpack(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """tfhe-rs's ``PackedIntegers::unpack`` for every row at once: ``count`` values of ``bits``
    bits each, packed lowest bits first across a row's 64-bit words."""
    start = np.arange(count, dtype=np.int64) * bits
    block, offset = start // 64, start % 64
    values = words[:, block] >> offset.astype(np.uint64)
    spill = np.flatnonzero(offset + bits > 64)  # values that continue in the next word
    values[:, spill] |= words[:, block[spill] + 1] << (64 - offset[spill]).astype(np.uint64)
    return values & np.uint64((1 << bits) - 1) if bits < 64 else values


# --------------------------------------------------------------------------- fund: verify


def _int_matrix(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.integer):
        raise PackedError(f"{name} must be integers, got dtype {array.dtype}.")
    return array.astype(np.int64)


def _split(total: np.ndarray, members: np.ndarray, weights: np.ndarray) -> None:
    """Spread each column's integer ``total`` over duplicate ``members`` as evenly as possible."""
    m = len(members)
    for column, t in enumerate(total.tolist()):
        q, r = divmod(abs(t), m)
        share = np.full(m, q, dtype=np.int64)
        share[:r] += 1
        weights[members, column] = share if t >= 0 else -share


def _integer_search(
    a: np.ndarray, y: np.ndarray, bounds: np.ndarray, seconds: float
) -> np.ndarray | None:
    """An integer ``w`` with ``a @ w == y`` and ``|w| <= bounds`` (MILP), or None."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    result = milp(
        c=np.zeros(a.shape[1]),
        constraints=LinearConstraint(a.astype(np.float64), y, y),
        integrality=np.ones(a.shape[1]),
        bounds=Bounds(-bounds, bounds),
        options={"time_limit": seconds},
    )
    if result.x is None:
        return None
    w = np.rint(result.x).astype(np.int64)
    return w if np.array_equal(a @ w, y) and (np.abs(w) <= bounds).all() else None


class LinearVerifier:
    """The fund's exact check that decrypted outputs are ``X @ W`` with integer ``|W| <= bound``.

    ``X`` is the same for every model of a round, so it is factorized once here and each
    model's outputs then cost a product and a triangular solve. A wrong key, tampered
    ciphertexts, altered rows or a non-linear model all fail :meth:`verify`. Steps:

    1. identical feature columns are merged (their weights only matter as a sum, bounded by
       ``multiplicity · bound``) and all-zero columns get weight 0;
    2. QR of the merged columns (pivoted when they are collinear) finds independent ones;
    3. per model: each output must be reachable by bounded weights on its row; least squares on
       the independent columns, rounded;
    4. if that is not exact or not within bounds and some columns are collinear, an integer
       program searches the other solutions (``search_seconds`` per output);
    5. merged weights are split back over their duplicates; ``X @ W == Y`` is checked on every
       row, in integers.

    It needs more distinct rows than features, else any outputs fit: pad a small round with
    rows the fund knows (indistinguishable once encrypted). Refused at construction otherwise.
    """

    def __init__(self, features: Any, weight_bound: int, *, search_seconds: float = 10.0) -> None:
        self.bound = _positive_int(weight_bound, "weight_bound")
        self.search_seconds = float(search_seconds)
        x = _int_matrix(features, "features")
        if x.ndim != 2 or not x.size:
            raise PackedError(f"features must be a non-empty (rows, n) matrix, got {x.shape}.")
        self.x = x
        self.reach = np.abs(x).sum(axis=1) * self.bound
        unique, inverse = np.unique(x, axis=1, return_inverse=True)
        self.inverse = inverse.reshape(-1)
        self.multiplicity = np.bincount(self.inverse, minlength=unique.shape[1])
        self.live = np.flatnonzero(unique.any(axis=0))
        self.a = unique[:, self.live]
        self.caps = self.multiplicity[self.live] * self.bound
        self.rank = 0
        if not self.live.size:
            return
        a = self.a.astype(np.float64)
        q, r = np.linalg.qr(a)  # BLAS-3, fast; its diagonal shows collinearity
        self.pivots = np.arange(self.live.size)
        tolerance = max(a.shape) * np.finfo(float).eps
        diagonal = np.abs(np.diag(r))
        if diagonal.min() <= diagonal.max() * tolerance:
            from scipy.linalg import qr

            q, r, self.pivots = qr(a, mode="economic", pivoting=True)
            diagonal = np.abs(np.diag(r))
        self.rank = int((diagonal > diagonal.max() * tolerance).sum())
        self.q, self.r = q[:, : self.rank], r[: self.rank, : self.rank]
        distinct_rows = len(np.unique(self.a[self.a.any(axis=1)], axis=0))
        if self.rank < self.live.size and self.rank >= distinct_rows:
            raise PackedError(
                f"cannot attribute outputs: {distinct_rows} distinct rows have rank {self.rank}, "
                f"fewer than the {self.live.size} distinct features, so any outputs fit. Encrypt "
                "more rows than features (pad with rows the fund knows)."
            )

    def verify(self, outputs: Any) -> np.ndarray:
        """Integer ``W`` with ``X @ W == outputs`` and ``|W| <= bound``, shaped like the outputs'
        columns (a vector for a vector); :class:`VerificationError` naming the reason otherwise.
        """
        x, bound = self.x, self.bound
        y_in = _int_matrix(outputs, "outputs")
        y = y_in[:, None] if y_in.ndim == 1 else y_in
        if y.ndim != 2 or y.shape[0] != x.shape[0] or y.shape[1] < 1:
            raise PackedError(
                f"outputs must be ({x.shape[0]},) or ({x.shape[0]}, k), got {y_in.shape}."
            )
        over = np.argwhere(np.abs(y) > self.reach[:, None])
        if over.size:
            row, column = (int(v) for v in over[0])
            raise VerificationError(
                f"outputs beyond what weights within ±{bound} can give: not X @ W (wrong key or "
                "tampered result).",
                f"output {column}, row {row}: {int(y[row, column])}, "
                f"reach ±{int(self.reach[row])}.",
            )
        w_unique = np.zeros((len(self.multiplicity), y.shape[1]), dtype=np.int64)
        if self.live.size:
            w_unique[self.live] = self._solve(y)
        weights = np.zeros((x.shape[1], y.shape[1]), dtype=np.int64)
        for group in np.flatnonzero(self.multiplicity):
            _split(w_unique[group], np.flatnonzero(self.inverse == group), weights)
        if not np.array_equal(x @ weights, y) or int(np.abs(weights).max(initial=0)) > bound:
            raise VerificationError("no integer weights within bounds reproduce the outputs.")
        return weights[:, 0] if y_in.ndim == 1 else weights

    def _solve(self, y: np.ndarray) -> np.ndarray:
        """Weights of the merged, non-zero columns (steps 3 and 4)."""
        from scipy.linalg import solve_triangular

        a, caps, rank = self.a, self.caps, self.rank
        z = solve_triangular(self.r, self.q.T @ y.astype(np.float64))
        fitted = self.q @ (self.q.T @ y.astype(np.float64))
        w_live = np.zeros((self.live.size, y.shape[1]), dtype=np.int64)
        w_live[self.pivots[:rank]] = np.rint(z).astype(np.int64)
        for column in range(y.shape[1]):
            w = w_live[:, column]
            if np.array_equal(a @ w, y[:, column]) and (np.abs(w) <= caps).all():
                continue
            residual = np.abs(fitted[:, column] - y[:, column])
            if residual.max() > 0.25:  # not even a real linear function of the features
                row = int(residual.argmax())
                raise VerificationError(
                    f"output {column} is not a linear function of the features (wrong key, "
                    "tampered result, or a model that is not X @ W).",
                    f"row {row} off by {residual[row]:.3g}; "
                    f"{int((residual > 0.25).sum())} of {len(a)} rows off.",
                )
            found = None
            if rank < self.live.size:  # collinear columns: search the other exact solutions
                found = _integer_search(
                    a, y[:, column], caps.astype(np.float64), self.search_seconds
                )
            if found is None and not np.array_equal(a @ w, y[:, column]):
                raise VerificationError(
                    f"output {column}: no integer weights fit (not an integer linear model of "
                    "the features).",
                    f"searched {self.search_seconds} s" if rank < self.live.size else "unique fit",
                )
            if found is None:
                worst = int(np.argmax(np.abs(w) - caps))
                feature = int(np.flatnonzero(self.inverse == self.live[worst])[0])
                raise VerificationError(
                    f"output {column}: the weights that fit exceed the declared bound "
                    f"±{self.bound}.",
                    f"feature column {feature} needs {int(w[worst])}.",
                )
            w_live[:, column] = found
        return w_live


def verify_linear(
    features: Any, outputs: Any, weight_bound: int, *, search_seconds: float = 10.0
) -> np.ndarray:
    """One-off :class:`LinearVerifier` check (build the verifier once per round for many models)."""
    verifier = LinearVerifier(features, weight_bound, search_seconds=search_seconds)
    if np.asarray(outputs).shape[:1] != verifier.x.shape[:1]:
        raise PackedError(
            f"features {verifier.x.shape} and outputs {np.asarray(outputs).shape} must share rows."
        )
    return verifier.verify(outputs)
