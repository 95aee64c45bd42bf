"""Packed (GLWE) rounds: parameters, exact X @ W through real FHE at small sizes, the fund's
verifier, and refusal of hostile bytes on every decoder (never a crash)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fhe_toolkit.errors import PackedError, VerificationError
from fhe_toolkit.fhe import glwe, packed
from fhe_toolkit.fhe.glwe import (
    LinearVerifier,
    PackedParams,
    choose_params,
    verify_linear,
)
from fhe_toolkit.fhe.packed import verify_products
from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.protocol.modelspec import LinearSpec

BOUND = 127
N_FEATURES = 12
N_ROWS = 20
CHUNK = 8


def features(rows: int = N_ROWS, n: int = N_FEATURES, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).integers(0, 5, (rows, n)).astype(np.int8)
    x[0] = 4  # the largest accumulator the bounds allow
    x[1] = 0
    return x


def weights(n: int = N_FEATURES, seed: int = 1) -> np.ndarray:
    w = np.random.default_rng(seed).integers(-BOUND, BOUND + 1, (n, 3))
    w[:, 0] = BOUND
    w[:, 1] = -BOUND
    return w


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(("n", "bound"), [(12, 127), (42, 127), (780, 127), (2748, 127)])
def test_choose_params_bits_and_noise_margin(n, bound):
    p = choose_params(n, bound)
    assert p.bits == (n * 4 * bound).bit_length() + 1
    assert p.accumulator_bound < 2 ** (p.bits - 1)
    assert p.margin_sigmas >= glwe.MARGIN_SIGMAS
    assert p.ks_level == 2  # 8-bit weights fit the cheapest key switch at Numerai widths
    assert p.output_storage_bits > p.bits


def test_choose_params_refuses_bounds_it_cannot_decrypt_exactly():
    with pytest.raises(PackedError, match="no exact parameters"):
        choose_params(780, 2**15)
    with pytest.raises(PackedError, match="positive integer"):
        choose_params(0, 127)
    with pytest.raises(PackedError, match="positive integer"):
        choose_params(12, 1.5)  # type: ignore[arg-type]


def test_params_json_round_trip_and_tampering():
    p = choose_params(N_FEATURES, BOUND, max_outputs=3)
    assert PackedParams.from_json(p.to_json()) == p
    tampered = json.loads(p.to_json())
    tampered["output_storage_bits"] = 26  # e.g. the library default, too few bits here
    with pytest.raises(PackedError, match="differ from what choose_params picks"):
        PackedParams.from_json(json.dumps(tampered))
    del tampered["output_storage_bits"]
    with pytest.raises(PackedError, match="exactly the fields"):
        PackedParams.from_json(json.dumps(tampered))
    with pytest.raises(PackedError, match="not JSON"):
        PackedParams.from_json("{not json")
    with pytest.raises(PackedError, match="scheme"):
        PackedParams.from_json("[]")


def test_check_weights_names_what_is_wrong():
    p = choose_params(N_FEATURES, BOUND, max_outputs=3)
    assert glwe.check_weights(p, np.arange(N_FEATURES)).shape == (N_FEATURES, 1)
    too_big = np.zeros(N_FEATURES, dtype=np.int64)
    too_big[5] = -BOUND - 1
    with pytest.raises(PackedError, match=r"weight -128 \(feature 5, output 0\) exceeds"):
        glwe.check_weights(p, too_big)
    with pytest.raises(PackedError, match="exceeds the declared bound"):
        glwe.check_weights(p, np.full(N_FEATURES, 2**63, dtype=np.uint64))  # -2**63 as int64
    with pytest.raises(PackedError, match="must be integers"):
        glwe.check_weights(p, np.zeros(N_FEATURES))
    with pytest.raises(PackedError, match="vector of 12 integers"):
        glwe.check_weights(p, np.zeros(N_FEATURES + 1, dtype=np.int64))
    with pytest.raises(PackedError, match="allows 3"):
        glwe.check_weights(p, np.zeros((N_FEATURES, 4), dtype=np.int64))


def test_row_chunks_cover_all_rows():
    assert glwe.row_chunks(20, 8) == [(0, 8), (8, 16), (16, 20)]
    assert glwe.row_chunks(3, 8) == [(0, 3)]


# --------------------------------------------------------------------------- verifier


def test_verify_recovers_weights_exactly_including_extremes():
    x = features()
    w = weights()
    assert np.array_equal(verify_linear(x, x.astype(np.int64) @ w, BOUND), w)
    assert np.array_equal(verify_linear(x, x.astype(np.int64) @ w[:, 2], BOUND), w[:, 2])


def test_one_verifier_serves_every_model_of_a_round():
    x = features(rows=40)
    verifier = LinearVerifier(x, BOUND)
    for seed in range(4):
        w = weights(seed=seed)
        assert np.array_equal(verifier.verify(x.astype(np.int64) @ w), w)
    with pytest.raises(PackedError, match=r"\(40,\) or \(40, k\)"):
        verifier.verify(np.zeros(39, dtype=np.int64))


def test_verify_duplicate_and_zero_columns():
    x = features()
    x[:, 3] = x[:, 7]  # duplicate: only w3 + w7 is identifiable
    x[:, 9] = 0  # all-zero column: its weight is anything
    w = weights()
    y = x.astype(np.int64) @ w
    found = verify_linear(x, y, BOUND)
    assert np.array_equal(x.astype(np.int64) @ found, y)
    assert np.abs(found).max() <= BOUND
    assert np.array_equal(found[3] + found[7], w[3] + w[7])
    assert not found[9].any()


def test_verify_collinear_columns_searches_bounded_integer_weights():
    x = features(rows=30, seed=3)
    x[:, 2] = x[:, 0] + x[:, 1]  # values up to 8: a derived feature
    w = weights()[:, 2].copy()
    w[0], w[1], w[2] = 100, 100, 100  # the basis solution (200, 200, 0) is out of bounds
    y = x.astype(np.int64) @ w
    found = verify_linear(x, y, BOUND)
    assert np.array_equal(x.astype(np.int64) @ found, y)
    assert np.abs(found).max() <= BOUND


def test_verify_refuses_non_linear_outputs():
    x = features()
    y = x.astype(np.int64) @ weights()[:, 2]
    with pytest.raises(PackedError, match="not a linear function"):
        verify_linear(x, y + x[:, 0].astype(np.int64) * x[:, 1], BOUND)


def test_verify_refuses_a_single_altered_row():
    x = features()
    y = x.astype(np.int64) @ weights()
    y[13, 2] += 1
    with pytest.raises(VerificationError, match="output 2 is not a linear") as caught:
        verify_linear(x, y, BOUND)
    assert "13" not in str(caught.value)  # which row failed is for the fund's log only
    assert caught.value.detail.startswith("row 13 off by")


def test_verify_refuses_a_constant_offset():
    """The bias is applied by the fund in clear; it is never part of the encrypted product."""
    x = features()
    with pytest.raises(PackedError):
        verify_linear(x, x.astype(np.int64) @ weights()[:, 2] + 3, BOUND)


def test_verify_refuses_out_of_bound_weights():
    x = features()
    w = weights()[:, 2].copy()
    w[4] = BOUND + 40
    with pytest.raises(VerificationError, match="exceed the declared bound ±127") as caught:
        verify_linear(x, x.astype(np.int64) @ w, BOUND)
    assert caught.value.detail == "feature column 4 needs 167."


def test_verify_refuses_values_out_of_reach():
    x = features()
    y = x.astype(np.int64) @ weights()[:, 2]
    y[1] = 5  # row 1 is all zeros: only 0 is reachable
    with pytest.raises(VerificationError, match="beyond what weights within ±127") as caught:
        verify_linear(x, y, BOUND)
    assert "5" not in str(caught.value)
    assert caught.value.detail == "output 0, row 1: 5, reach ±0."


def test_verify_refuses_when_rows_cannot_identify_weights():
    with pytest.raises(PackedError, match="cannot attribute"):
        LinearVerifier(features(rows=8), BOUND)


def test_the_rounds_verifier_is_reused_and_never_mixes_up_features():
    """Models on the same features share one factorization; other features get their own, and
    outputs of one matrix are still refused against another."""
    names = [f"feature_{i}" for i in range(N_FEATURES)]
    spec = LinearSpec(
        name="m", family="linear", target="target", features=names, weight_bits=8, scale=1.0,
        intercept=0.0, versions=package_versions(),
    )  # fmt: skip
    first, second = features(rows=40), features(rows=40, seed=3)
    w = weights()
    assert np.array_equal(verify_products(first, spec, first.astype(np.int64) @ w[:, 2]), w[:, 2])
    shared = packed._VERIFIERS.copy()
    assert np.array_equal(verify_products(first, spec, first.astype(np.int64) @ w[:, 0]), w[:, 0])
    assert packed._VERIFIERS == shared, "the same features were factorized again"
    assert np.array_equal(verify_products(second, spec, second.astype(np.int64) @ w[:, 1]), w[:, 1])
    with pytest.raises(VerificationError):
        verify_products(first, spec, second.astype(np.int64) @ w[:, 1])


def test_verify_refuses_float_or_misshapen_inputs():
    x = features()
    with pytest.raises(PackedError, match="must be integers"):
        verify_linear(x, np.zeros(N_ROWS), BOUND)
    with pytest.raises(PackedError, match="must share rows"):
        verify_linear(x, np.zeros(N_ROWS + 1, dtype=np.int64), BOUND)


# --------------------------------------------------------------------------- hostile bytes (no FHE)

GARBAGE = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x07" * 100, id="not-a-multiple-of-8"),
    pytest.param(b"\xff" * 4096, id="garbage"),
    pytest.param((2**62).to_bytes(8, "little") + b"\x00" * 64, id="huge-length"),
    pytest.param(b"\x00" * 800, id="zeros"),
    pytest.param("not bytes", id="str"),
]


@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_is_refused_before_the_library_sees_it(data):
    p = choose_params(N_FEATURES, BOUND)
    with pytest.raises(PackedError):
        glwe.check_encrypted_chunk(p, data)
    with pytest.raises(PackedError):
        glwe.RoundKey.from_bytes(p, data)
    with pytest.raises(PackedError):
        glwe.CompressionKey.from_bytes(p, data)
    with pytest.raises(PackedError):
        glwe._check_result(p, data, n_rows=2, n_outputs=1)


def test_library_panics_become_packed_errors():
    """Without the layout checks the library panics (or, on some headers, aborts)."""
    fhext = pytest.importorskip("concrete_ml_extensions")
    with pytest.raises(PackedError, match="concrete-ml-extensions"):
        glwe._call("reading", fhext.EncryptedMatrix.deserialize, b"\x07" * 64)


# --------------------------------------------------------------------------- real FHE


@pytest.fixture(scope="module")
def round_keys():
    params = choose_params(N_FEATURES, BOUND, max_outputs=3)
    key, compression = glwe.RoundKey.generate(params)
    return params, key, compression


@pytest.fixture(scope="module")
def encrypted(round_keys):
    _, key, _ = round_keys
    return glwe.encrypt_rows(key, features(), chunk_rows=CHUNK)


def run_round(key, compression, chunks, w, n_outputs=3):
    results = [glwe.multiply_chunk(compression, chunk, w) for chunk in chunks]
    sizes = [b - a for a, b in glwe.row_chunks(N_ROWS, CHUNK)]
    return results, np.vstack(
        [
            glwe.decrypt_chunk(key, r, n_rows=n, n_outputs=n_outputs)
            for r, n in zip(results, sizes, strict=True)
        ]
    )


@pytest.mark.fhe
def test_encrypted_product_is_exact_at_the_bounds(round_keys, encrypted):
    params, key, compression = round_keys
    x, w = features(), weights()
    results, y = run_round(key, compression, encrypted, w)
    assert y.dtype == np.int64
    assert np.array_equal(y, x.astype(np.int64) @ w)
    assert y[0, 0] == params.accumulator_bound and y[0, 1] == -params.accumulator_bound
    assert np.array_equal(verify_linear(x, y, BOUND), w)
    assert len(encrypted[0]) == CHUNK * params.input_bytes_per_row + 24
    assert len(results[0]) == CHUNK * params.output_bytes_per_row(3) + 8


@pytest.mark.fhe
def test_vector_weights_give_one_column(round_keys, encrypted):
    _, key, compression = round_keys
    w = weights()[:, 2]
    _, y = run_round(key, compression, encrypted, w, n_outputs=1)
    assert np.array_equal(y[:, 0], features().astype(np.int64) @ w)


@pytest.mark.fhe
def test_a_chunk_multiplied_a_few_rows_per_call_gives_the_same_bytes(round_keys, encrypted):
    _, _, compression = round_keys
    whole = glwe.multiply_chunk(compression, encrypted[0], weights(), rows_per_call=CHUNK)
    for rows_per_call in (1, 3):
        pieces = glwe.multiply_chunk(
            compression, encrypted[0], weights(), rows_per_call=rows_per_call
        )
        assert pieces == whole


@pytest.mark.fhe
def test_serialization_round_trips(round_keys, encrypted):
    params, key, compression = round_keys
    key2 = glwe.RoundKey.from_bytes(PackedParams.from_json(params.to_json()), key.to_bytes())
    assert key2.to_bytes() == key.to_bytes()
    compression2 = glwe.CompressionKey.from_bytes(params, compression.to_bytes())
    assert glwe.check_encrypted_chunk(params, encrypted[0]) == CHUNK
    result = glwe.multiply_chunk(compression2, encrypted[0], weights())
    y = glwe.decrypt_chunk(key2, result, n_rows=CHUNK, n_outputs=3)
    assert np.array_equal(y, features()[:CHUNK].astype(np.int64) @ weights())


@pytest.mark.fhe
def test_wrong_key_gives_garbage_the_verifier_refuses(round_keys, encrypted):
    params, key, compression = round_keys
    secret = bytearray(key.to_bytes())
    secret[8 * (2048 + 2) + 8 * 7] ^= 1  # one bit of the post-compression key
    wrong = glwe.RoundKey.from_bytes(params, bytes(secret))
    results, _ = run_round(key, compression, encrypted, weights())
    sizes = [b - a for a, b in glwe.row_chunks(N_ROWS, CHUNK)]
    y = np.vstack(
        [
            glwe.decrypt_chunk(wrong, r, n_rows=n, n_outputs=3)
            for r, n in zip(results, sizes, strict=True)
        ]
    )
    assert not np.array_equal(y, features().astype(np.int64) @ weights())
    with pytest.raises(PackedError):
        verify_linear(features(), y, BOUND)


def _put(data: bytes, word: int, value: int) -> bytes:
    out = bytearray(data)
    out[8 * word : 8 * word + 8] = value.to_bytes(8, "little")
    return bytes(out)


@pytest.mark.fhe
def test_hostile_chunks_are_refused(round_keys, encrypted):
    params, _, compression = round_keys
    chunk = encrypted[0]
    coefficients = 2048 * params.input_storage_bits // 64
    header = 3 + coefficients  # word index of the first GLWE's packed log-modulus
    hostile = {
        "truncated": chunk[:-8],
        "extended": chunk + b"\x00" * 8,
        "rows claimed": _put(chunk, 0, CHUNK + 1),
        "initial length 2**40 (aborts the library)": _put(chunk, header + 1, 2**40),
        "GLWE dimension 2**40 (aborts the library)": _put(chunk, header + 3, 2**40),
        "polynomial size": _put(chunk, header + 4, 4096),
        "row length": _put(chunk, header + 10, N_FEATURES + 1),
    }
    for name, data in hostile.items():
        with pytest.raises(PackedError, match="encrypted chunk"):
            glwe.multiply_chunk(compression, data, weights())
        assert name


@pytest.mark.fhe
def test_hostile_results_are_refused_or_caught(round_keys, encrypted):
    params, key, compression = round_keys
    result = glwe.multiply_chunk(compression, encrypted[0], weights())
    coefficients = -(-(2048 + 3) * params.output_storage_bits // 64)
    header = 3 + coefficients
    for data in (
        result[:-8],
        result + b"\x00" * 8,
        _put(result, header + 1, 2**40),  # initial length
        _put(result, header + 3, 2**40),  # polynomial size
        _put(result, header + 4, 2),  # bodies
        bytes(len(result)),
    ):
        with pytest.raises(PackedError, match="encrypted result"):
            glwe.decrypt_chunk(key, data, n_rows=CHUNK, n_outputs=3)
    with pytest.raises(PackedError, match="encrypted result"):
        glwe.decrypt_chunk(key, result, n_rows=CHUNK, n_outputs=2)
    # Well-formed but forged coefficients decrypt to garbage, which the verifier refuses.
    words = np.frombuffer(result, dtype="<u8").copy()
    rng = np.random.default_rng(5)
    words[3 : 3 + coefficients] = rng.integers(0, 2**63, coefficients, dtype=np.uint64)
    forged = glwe.decrypt_chunk(key, words.tobytes(), n_rows=CHUNK, n_outputs=3)
    with pytest.raises(PackedError):
        verify_linear(features(rows=CHUNK), forged, BOUND)


def _library_decryption(key, result: bytes, n_rows: int, n_outputs: int) -> np.ndarray:
    """The extension's own ``decrypt_matrix``, read as decrypt_chunk reads values."""
    fhext = glwe._fhext()
    matrix = fhext.CompressedResultEncryptedMatrix.deserialize(result)
    raw = fhext.decrypt_matrix(matrix, key.key, key.params._library_params(), n_outputs)
    values = np.asarray(raw, dtype=np.uint64).reshape(n_rows, n_outputs)
    modulus = 1 << key.params.bits
    reduced = (values & np.uint64(modulus - 1)).astype(np.int64)
    return np.where(reduced >= modulus // 2, reduced - modulus, reduced)


@pytest.mark.fhe
@pytest.mark.parametrize("n_outputs", [1, 3])
def test_decryption_equals_the_librarys_on_real_and_forged_results(
    round_keys, encrypted, n_outputs
):
    params, key, compression = round_keys
    w = weights()[:, :n_outputs]
    result = glwe.multiply_chunk(compression, encrypted[0], w)
    ours = glwe.decrypt_chunk(key, result, n_rows=CHUNK, n_outputs=n_outputs)
    assert np.array_equal(ours, _library_decryption(key, result, CHUNK, n_outputs))
    assert np.array_equal(ours, features()[:CHUNK].astype(np.int64) @ w)
    # Any coefficients at all (every bit position of the packing, values that round either
    # way, wrap, or land on the sign boundary): the same values as the library's.
    words = np.frombuffer(result, dtype="<u8").copy()
    table = words[1:].reshape(CHUNK, -1)
    count = -(-(2048 + n_outputs) * params.output_storage_bits // 64)
    rng = np.random.default_rng(n_outputs)
    table[:, 2 : 2 + count] = rng.integers(0, 2**64, (CHUNK, count), dtype=np.uint64)
    forged = words.tobytes()
    ours = glwe.decrypt_chunk(key, forged, n_rows=CHUNK, n_outputs=n_outputs)
    assert np.array_equal(ours, _library_decryption(key, forged, CHUNK, n_outputs))


@pytest.mark.fhe
def test_hostile_keys_are_refused(round_keys):
    params, key, compression = round_keys
    secret = key.to_bytes()
    with pytest.raises(PackedError, match="private key"):
        glwe.RoundKey.from_bytes(params, secret[:-8])
    with pytest.raises(PackedError, match="not two binary keys"):
        glwe.RoundKey.from_bytes(params, _put(secret, 5, 2))
    public = compression.to_bytes()
    with pytest.raises(PackedError, match="compression key"):
        glwe.CompressionKey.from_bytes(params, public[:-8])
    other = choose_params(N_FEATURES, 3)  # other storage bits: the same size, another footer
    with pytest.raises(PackedError, match="other parameters"):
        glwe.CompressionKey.from_bytes(other, public)


@pytest.mark.fhe
def test_encryption_refuses_bad_features(round_keys):
    _, key, _ = round_keys
    x = features()
    with pytest.raises(PackedError, match=r"0\.\.4"):
        glwe.encrypt_chunk(key, np.where(x == 4, 5, x))
    with pytest.raises(PackedError, match="must be integers"):
        glwe.encrypt_chunk(key, x.astype(np.float32))
    with pytest.raises(PackedError, match=r"\(rows, 12\)"):
        glwe.encrypt_chunk(key, x[:, :5])
