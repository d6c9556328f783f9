"""How vectors travel in an answer: floats, base64 of float32, or quantized (int8, uint8, packed sign bits).

The scaling is fixed, so that a client can compare quantized vectors across requests and releases:

- int8: round(clip(x, -1, 1) * 127), integers in -127..127
- uint8: round((clip(x, -1, 1) + 1) * 127.5), integers in 0..255
- binary: the sign bits (x > 0 is 1), packed 8 per byte, most significant bit first (numpy.packbits), the last
  byte padded with zero bits: ceil(dim / 8) integers in 0..255
- base64: base64 of the little-endian float32 values (OpenAI's `base64`)

Rounding is half to even (numpy.rint). Unit vectors have every value in [-1, 1]; clipping only matters for
vectors asked for without normalization.
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np

EncodingFormat = Literal["float", "base64", "int8", "uint8", "binary"]
ENCODING_FORMATS: tuple[EncodingFormat, ...] = ("float", "base64", "int8", "uint8", "binary")


def vectors_quantized(vectors: np.ndarray, encoding_format: EncodingFormat) -> np.ndarray:
    """The (n, dim) float vectors as int8, uint8 or packed bits (n, ceil(dim / 8)); floats are returned as they are."""
    if encoding_format == "int8":
        return np.rint(np.clip(vectors, -1.0, 1.0) * 127.0).astype(np.int8)
    if encoding_format == "uint8":
        return np.rint((np.clip(vectors, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    if encoding_format == "binary":
        return np.packbits(vectors > 0, axis=1)
    return vectors


def vectors_encoded(vectors: np.ndarray, encoding_format: EncodingFormat) -> list[object]:
    """One value per vector, as the answer carries it: a numpy row (floats or integers) or a base64 string."""
    if encoding_format == "base64":
        return [base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii") for vector in vectors]
    return list(vectors_quantized(vectors, encoding_format))
