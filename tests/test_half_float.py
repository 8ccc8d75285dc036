"""float16 rounding of the stored arc: bit for bit NumPy's IEEE conversion (ties to even, subnormals,
signed zeros, overflow, NaN), and an exact round trip."""
import numpy as np

from udfs.stamps.half_float import from_float16, to_float16


def test_rounding_equals_numpy_bit_for_bit():
    rng = np.random.default_rng(0)
    edges = [0.0, -0.0, np.nan, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, 1e6, 2.0 ** -24, 2.0 ** -25,
             3 * 2.0 ** -25, 2.0 ** -26, 2.0 ** -14, 2.0 ** -14 - 2.0 ** -25, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11,
             -(1 + 2.0 ** -11), 0.1, 1 / 3]
    wings = np.exp(-rng.random(50_000) * 40) * rng.choice([-1.0, 1.0], 50_000)   # arcs' faint wings
    x = np.concatenate([edges, wings, rng.normal(0, 50, 5_000)]).reshape(-1, 5)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    got = to_float16(x)
    assert got.dtype == np.float16 and got.shape == x.shape
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    np.testing.assert_array_equal(from_float16(got), want.astype(np.float64))
    assert from_float16(to_float16(from_float16(got))).tobytes() == from_float16(got).tobytes()
