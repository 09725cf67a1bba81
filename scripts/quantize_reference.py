#!/usr/bin/env python3
"""Reference quantization for Realm's kernel tests.

Usage: quantize_reference.py [--ggml LIBGGML_BASE] TYPE INPUT OUTPUT [TYPE INPUT OUTPUT ...]

TYPE is a GGML type name as llama.cpp prints it (Q4_0, BF16, Q4_K, ...). INPUT holds
little-endian float32 values, a whole number of blocks of TYPE; OUTPUT receives their
quantized bytes. By default gguf-py's numpy quantizers (`gguf.quants.quantize`) compute them;
with --ggml, llama.cpp's own C reference quantizers do, called through `ggml_quantize_chunk`
in the given libggml-base shared library (llama-cpp-python ships one). Several triples may be
given so that one interpreter start serves a whole test run.
"""

import ctypes
import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quantize


def ggml_quantizer(lib_path: str):
    lib = ctypes.CDLL(lib_path)
    fn = lib.ggml_quantize_chunk
    # size_t ggml_quantize_chunk(enum ggml_type type, const float * src, void * dst,
    #                            int64_t start, int64_t nrows, int64_t n_per_row, const float * imatrix)
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p]
    fn.restype = ctypes.c_size_t

    def run(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        out = np.zeros(values.size // block_size * type_size, dtype=np.uint8)
        written = fn(int(qtype), values.ctypes.data, out.ctypes.data, 0, 1, values.size, None)
        if written != out.size:
            raise SystemExit(f"ggml_quantize_chunk wrote {written} bytes, expected {out.size}")
        return out

    return run


def gguf_py(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    return np.ascontiguousarray(quantize(values.reshape((1, -1)), qtype)).view(np.uint8).reshape(-1)


def main(argv: list[str]) -> None:
    run = gguf_py
    if argv[:1] == ["--ggml"]:
        if len(argv) < 2:
            raise SystemExit(__doc__)
        run = ggml_quantizer(argv[1])
        argv = argv[2:]
    if not argv or len(argv) % 3 != 0:
        raise SystemExit(__doc__)
    for i in range(0, len(argv), 3):
        type_name, input_path, output_path = argv[i : i + 3]
        try:
            qtype = GGMLQuantizationType[type_name]
        except KeyError:
            raise SystemExit(f"unknown GGML type {type_name!r}") from None
        block_size, _ = GGML_QUANT_SIZES[qtype]
        values = np.fromfile(input_path, dtype="<f4")
        if values.size % block_size != 0:
            raise SystemExit(f"{input_path}: {values.size} values is not a whole number of {type_name} blocks")
        run(np.ascontiguousarray(values, dtype=np.float32), qtype).tofile(output_path)


if __name__ == "__main__":
    main(sys.argv[1:])
