#!/usr/bin/env python3
"""Reference dequantization for Realm's kernel tests, computed by gguf-py's numpy code.

Usage: quant_reference.py TYPE INPUT OUTPUT [TYPE INPUT OUTPUT ...]

TYPE is a GGML type name as llama.cpp prints it (Q4_K, BF16, ...). INPUT holds raw blocks of
that type; OUTPUT receives the dequantized values as little-endian float32. Several triples
may be given so that one interpreter start serves a whole test run.
"""

import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize


def convert(type_name: str, input_path: str, output_path: str) -> None:
    try:
        qtype = GGMLQuantizationType[type_name]
    except KeyError:
        raise SystemExit(f"unknown GGML type {type_name!r}") from None
    _, type_size = GGML_QUANT_SIZES[qtype]
    raw = np.fromfile(input_path, dtype=np.uint8)
    if raw.size % type_size != 0:
        raise SystemExit(f"{input_path}: {raw.size} bytes is not a whole number of {type_name} blocks")
    values = dequantize(raw.reshape((1, -1)), qtype)
    np.ascontiguousarray(values, dtype="<f4").tofile(output_path)


def main(argv: list[str]) -> None:
    if not argv or len(argv) % 3 != 0:
        raise SystemExit(__doc__)
    for i in range(0, len(argv), 3):
        convert(*argv[i : i + 3])


if __name__ == "__main__":
    main(sys.argv[1:])
