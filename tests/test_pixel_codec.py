"""udfs.io.pixel_codec: one byte-stream-split binary value per row, read back by its documented recipe."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from udfs.io import parquet_files, pixel_codec


def _rows(dtype: str, n: int, n_rows: int, seed: int = 3) -> list:
    """Noisy values of ``dtype`` spanning many exponents, every 5th row None (a failed stamp)."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        make = lambda: rng.integers(-2 ** 31, 2 ** 31 - 1, n, dtype=np.int64).astype(dtype)  # noqa: E731
    else:
        make = lambda: (rng.normal(size=n) * 10.0 ** rng.uniform(-6, 3, n)).astype(dtype)  # noqa: E731
    return [None if i % 5 == 2 else make() for i in range(n_rows)]


@pytest.mark.parametrize("dtype", ["<f4", "<f2", "<i4", "<f8"])
def test_stored_bytes_are_the_byte_planes_of_the_module_recipe(dtype):
    n, rows = 300, _rows(dtype, 300, 12)
    f = pixel_codec.field("image", n, dtype, {"unit": "nanomaggies"})
    column = pixel_codec.encode(rows, f)
    assert f.type == pa.binary(n * np.dtype(dtype).itemsize)
    assert f.metadata == {b"unit": b"nanomaggies", b"dtype": dtype.encode(), b"encoding": b"byte_stream_split"}
    assert column.null_count == sum(r is None for r in rows)
    for value, row in zip(column.to_pylist(), rows):
        if row is None:
            assert value is None
            continue
        # reference: byte k of every value, k = 0 (least significant) first, by NumPy's own view
        expected = np.ascontiguousarray(row.view(np.uint8).reshape(n, -1).T).tobytes()
        assert value == expected
        # the module doc's recipe reads it back
        planes = np.frombuffer(value, np.uint8).reshape(np.dtype(dtype).itemsize, n)
        np.testing.assert_array_equal(np.ascontiguousarray(planes.T).view(dtype).ravel(), row)


@pytest.mark.parametrize("dtype", ["<f4", "<f2", "<i4"])
def test_round_trip_through_parquet_keeps_values_nulls_and_nan(dtype):
    n, rows = 64 * 64, _rows(dtype, 64 * 64, 9)
    if np.dtype(dtype).kind == "f":
        rows[0][[0, 5]] = [np.nan, -np.inf]
    f = pixel_codec.field("arc", n, dtype)
    schema = pa.schema([f])
    buf = io.BytesIO()
    pq.write_table(pa.table([pixel_codec.encode(rows, f)], schema=schema), buf,
                   **parquet_files.writer_options(schema))
    table = pq.read_table(io.BytesIO(buf.getvalue()))
    assert pixel_codec.is_encoded(table.schema.field("arc"))
    values, valid = pixel_codec.decode(table.column("arc"), table.schema.field("arc"))
    assert values.dtype == np.dtype(dtype) and values.shape == (len(rows), n)
    np.testing.assert_array_equal(valid, [r is not None for r in rows])
    for got, row in zip(values, rows):
        if row is not None:
            np.testing.assert_array_equal(got, row)  # NaN == NaN here, bit patterns kept
    # a slice of a column (offset into the buffer) and the sequence of bytes pandas gives
    sliced = table.column("arc").slice(3, 4)
    np.testing.assert_array_equal(pixel_codec.decode(sliced, f)[0], values[3:7])
    from_pandas, ok = pixel_codec.decode(table.column("arc").to_pandas().tolist(), f)
    np.testing.assert_array_equal(ok, valid)
    np.testing.assert_array_equal(from_pandas[valid], values[valid])


def test_values_are_cast_to_the_field_dtype_and_a_wrong_length_is_refused():
    f = pixel_codec.field("arc", 4, "<f2")
    column = pixel_codec.encode([np.array([1.0, 1.0 + 2.0 ** -12, 65000.0, 1e-9])], f)
    np.testing.assert_array_equal(pixel_codec.decode(column, f)[0][0],
                                  np.array([1.0, 1.0 + 2.0 ** -12, 65000.0, 1e-9]).astype(np.float16))
    with pytest.raises(ValueError, match="column arc: row 1 holds 3 values, not 4"):
        pixel_codec.encode([np.zeros(4), np.zeros(3)], f)
    with pytest.raises(ValueError, match="row 0 holds 1 values"):  # no silent broadcast of a scalar
        pixel_codec.encode([np.float32(1.0)], f)
    values, valid = pixel_codec.decode(pa.chunked_array([], f.type), f)  # a file part without rows
    assert values.shape == (0, 4) and values.dtype == np.float16 and valid.shape == (0,)

