"""ggml's own quantizers, through ctypes: the code that writes GGUF files, so every error we measure
is the error the file holds.

libggml-base ships inside the llama-cpp-python package (its `lib` folder). From it we call
`ggml_quantize_chunk` (no importance matrix), the type traits' `to_float`, `ggml_row_size`,
`ggml_blck_size` and `ggml_type_size`. Nothing here re-implements a codec.

The menu is the ggml types llama.cpp writes without an importance matrix. A type is offered for a
tensor only where llama.cpp writes that very type: its row length (ne[0], the input axis) must be a
multiple of the type's block size, because otherwise llama.cpp silently falls back to another type
(`tensor_type_fallback` in src/llama-quant.cpp), and the plan would say one type while the file holds
another.

>>> w = np.random.default_rng(0).standard_normal((4, 256), dtype=np.float32)
>>> blocks = quantize(w, "Q4_K")
>>> blocks.shape, dequantize(blocks, "Q4_K", w.shape).shape
((4, 144), (4, 256))
"""

import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# ggml_type enum values (ggml/include/ggml.h of llama.cpp as vendored by llama-cpp-python 0.3.36).
TYPE_IDS = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
    "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14,
    "IQ4_NL": 20, "IQ4_XS": 23, "BF16": 30,
}
# Quantized types offered to the allocator: none needs an importance matrix (ggml asserts without
# one only for IQ2_XXS, IQ2_XS, IQ1_S; llama.cpp's quantize refuses IQ3_XXS, IQ2_S, IQ1_M too).
QUANT_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS")
FLOAT_TYPES = ("F16", "BF16", "F32")
# Nominal bits of each type's codes (the `bits` column of a units table; float types are unquantized).
NOMINAL_BITS = {"Q2_K": 2, "Q3_K": 3, "Q4_K": 4, "Q5_K": 5, "Q6_K": 6, "Q8_0": 8, "Q4_0": 4, "Q4_1": 4,
                "Q5_0": 5, "Q5_1": 5, "IQ4_NL": 4, "IQ4_XS": 4, "F16": 16, "BF16": 16, "F32": 32}

# Rows are quantized in pieces of about this many weights, on a few threads (ctypes releases the GIL).
_CHUNK_ELEMENTS = 1 << 20


class GGMLError(RuntimeError):
    """libggml-base cannot be found or loaded."""


class _TypeTraits(ctypes.Structure):
    # struct ggml_type_traits in ggml.h
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


def library_path():
    """libggml-base of the installed llama-cpp-python (MINT_LIBGGML overrides it)."""
    if os.environ.get("MINT_LIBGGML"):
        return Path(os.environ["MINT_LIBGGML"])
    try:
        import llama_cpp
    except ImportError:
        raise GGMLError("llama-cpp-python is not installed: `make venv` (or pip install "
                        "'llama-cpp-python==0.3.36') provides libggml-base") from None
    lib = Path(llama_cpp.__file__).parent / "lib"
    found = sorted(lib.glob("libggml-base.*")) + sorted(lib.glob("ggml-base.dll"))
    if not found:
        raise GGMLError(f"no libggml-base in {lib}")
    return found[0]


@functools.cache
def library():
    """The loaded libggml-base with the signatures we call."""
    lib = ctypes.CDLL(str(library_path()))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = (ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.POINTER(ctypes.c_float))
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = (ctypes.c_int,)
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = (ctypes.c_int,)
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = (ctypes.c_int, ctypes.c_int64)
    lib.ggml_blck_size.restype = ctypes.c_int64
    lib.ggml_blck_size.argtypes = (ctypes.c_int,)
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_type_size.argtypes = (ctypes.c_int,)
    return lib


def type_id(name):
    """The ggml_type number of a type name; ValueError for a type outside the menu."""
    try:
        return TYPE_IDS[name]
    except KeyError:
        raise ValueError(f"unknown ggml type {name!r}; known: {', '.join(TYPE_IDS)}") from None


def block_size(name):
    """Weights per block of a type (256 for k-quants and IQ4_XS, 32 for the legacy types, 1 for floats)."""
    return int(library().ggml_blck_size(type_id(name)))


def row_bytes(name, n_per_row):
    """Bytes of one row of `n_per_row` weights (ggml_row_size)."""
    return int(library().ggml_row_size(type_id(name), n_per_row))


def tensor_bytes(name, shape):
    """Bytes of a tensor of numpy `shape` (rows along the last axis) stored as `name`."""
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows * row_bytes(name, shape[-1])


def requires_imatrix(name):
    return bool(library().ggml_quantize_requires_imatrix(type_id(name)))


def offered_types(n_per_row):
    """Quantized types llama.cpp writes as such for rows of `n_per_row` weights (no fallback)."""
    return tuple(t for t in QUANT_TYPES if n_per_row % block_size(t) == 0 and not requires_imatrix(t))


def _rows(w):
    w = np.ascontiguousarray(w, dtype=np.float32)
    return w.reshape(-1, w.shape[-1]) if w.ndim != 1 else w.reshape(1, -1)


def _pieces(n_rows, n_per_row):
    step = max(1, _CHUNK_ELEMENTS // max(n_per_row, 1))
    return [(start, min(step, n_rows - start)) for start in range(0, n_rows, step)]


def _threads():
    return max(1, min(8, os.cpu_count() or 1))


def quantize(w, name):
    """ggml's quantization of float32 `w` [..., n] as type `name`, no importance matrix.

    Returns the blocks as uint8 [rows, row_bytes] (rows = every leading axis flattened), the exact
    bytes llama.cpp writes for this tensor.
    """
    t, lib = type_id(name), library()
    rows = _rows(w)
    n_rows, n = rows.shape
    if n % block_size(name):
        raise ValueError(f"rows of {n} weights are not whole {name} blocks of {block_size(name)}")
    size = row_bytes(name, n)
    out = np.empty((n_rows, size), dtype=np.uint8)
    src = rows.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def run(piece):
        start, count = piece
        # `start` is an element offset into both src and dst (ggml_quantize_chunk's contract).
        written = lib.ggml_quantize_chunk(t, src, out.ctypes.data, start * n, count, n, None)
        assert written == count * size, (written, count * size)

    with ThreadPoolExecutor(_threads()) as pool:
        list(pool.map(run, _pieces(n_rows, n)))
    return out


def dequantize(blocks, name, shape):
    """float32 weights of numpy `shape` from `blocks` (uint8 [rows, row_bytes]) via the type's to_float."""
    blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
    if name == "F32":  # stored as is: ggml gives F32 no to_float
        return blocks.view(np.float32).reshape(shape).copy()
    to_float = _TO_FLOAT(library().ggml_get_type_traits(type_id(name)).contents.to_float)
    n = shape[-1]
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    size = row_bytes(name, n)
    if blocks.size != n_rows * size:
        raise ValueError(f"{blocks.size} bytes are not {n_rows} rows of {size} bytes ({name}, shape {shape})")
    out = np.empty((n_rows, n), dtype=np.float32)
    dst = out.ctypes.data

    def run(piece):
        start, count = piece
        to_float(blocks.ctypes.data + start * size,
                 ctypes.cast(dst + start * n * 4, ctypes.POINTER(ctypes.c_float)), count * n)

    with ThreadPoolExecutor(_threads()) as pool:
        list(pool.map(run, _pieces(n_rows, n)))
    return out.reshape(shape)


def round_trip(w, name):
    """What a runtime rebuilds from `w` stored as `name`: dequantize(quantize(w))."""
    w = np.asarray(w, dtype=np.float32)
    return dequantize(quantize(w, name), name, w.shape)


# squared_error works on blocks of rows of about this many weights (ggml quantizes each row alone):
# its temporaries (the blocks, the rebuilt weights, their difference in float64) are a block's.
_ERROR_BLOCK_ELEMENTS = 1 << 22


def sum_squares(x):
    """sum(x**2) in float64."""
    x = x.ravel()
    return float(np.dot(x.astype(np.float64), x))


def squared_error(w, name):
    """(sum of squared errors of `w` stored as `name`, sum of squares of `w`), both float64."""
    rows = _rows(w)
    step = max(1, _ERROR_BLOCK_ELEMENTS // max(rows.shape[1], 1))
    err = energy = 0.0
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step]
        err += sum_squares(round_trip(block, name) - block)
        energy += sum_squares(block)
    return err, energy
