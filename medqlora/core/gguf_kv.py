"""A GGUF file's key-value header, read alone: the tokenizer and model metadata without the tensors.

gguf.GGUFReader maps every tensor and builds a Python object per array element: on a 7B file's 152,064 tokens it
takes many seconds, and it fails on a file cut short (the first part of a split download). This reads the header
only, arrays of numbers as numpy arrays, so a tokenizer check costs about a second.
"""
from __future__ import annotations

import struct
from pathlib import Path

# GGUF value types (gguf.GGUFValueType) -> struct format; 8 is STRING, 9 ARRAY.
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFHeaderError(ValueError):
    """Not a GGUF file, or its header is cut short."""


class _Header:
    def __init__(self, f, path: Path):
        self.f, self.path, self.buf, self.pos = f, path, bytearray(), 0

    def need(self, n: int) -> None:  # read on only as far as the header goes (never the tensors)
        while len(self.buf) < self.pos + n:
            more = self.f.read(max(8 << 20, self.pos + n - len(self.buf)))
            if not more:
                raise GGUFHeaderError(f"{self.path}: the GGUF header is cut short at byte {24 + len(self.buf)}")
            self.buf.extend(more)

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        self.need(size)
        out = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return out

    def string(self) -> str:
        n = self.take("<Q")
        self.need(n)
        out = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return out

    def value(self, kind: int):
        import numpy as np

        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, n = self.take("<I"), self.take("<Q")
            self.item = item
            if item == _STRING:
                return [self.string() for _ in range(n)]
            if item not in _SCALAR:
                raise GGUFHeaderError(f"{self.path}: unsupported GGUF array type {item}")
            dtype = np.dtype(_SCALAR[item].replace("?", "b1") if item == 7 else _SCALAR[item])
            self.need(n * dtype.itemsize)
            arr = np.frombuffer(bytes(self.buf[self.pos:self.pos + n * dtype.itemsize]), dtype=dtype)
            self.pos += n * dtype.itemsize
            return arr
        if kind not in _SCALAR:
            raise GGUFHeaderError(f"{self.path}: unknown GGUF value type {kind} at byte {24 + self.pos}")
        return self.take(_SCALAR[kind])


def read_kv(path: str | Path) -> dict:
    """Every key of the GGUF's header: numbers and strings as Python values, string arrays as lists, number
    arrays as numpy arrays. Only the header is read (about 6 MB for a tokenizer of 152k tokens)."""
    return {k: v for k, (v, _, _) in read_kv_typed(path).items()}


def read_kv_typed(path: str | Path) -> dict:
    """{key: (value, GGUF value type, array item type or None)}: enough to write the same header again."""
    return _read(path, tensors=False)[0]


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape as GGUF writes it (fastest-varying first: token_embd is (hidden, rows))}."""
    return _read(path, tensors=True)[1]


def _read(path: str | Path, tensors: bool) -> tuple[dict, dict]:
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24 or head[:4] != b"GGUF":
            raise GGUFHeaderError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
        version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
        if version < 2:
            raise GGUFHeaderError(f"{path} is GGUF version {version}; only version 2 and later are read")
        h = _Header(f, path)
        out = {}
        for _ in range(n_kv):
            key, kind = h.string(), h.take("<I")
            h.item = None
            out[key] = (h.value(kind), kind, h.item)
        shapes = {}
        for _ in range(n_tensors if tensors else 0):  # name, dims, type, offset
            name = h.string()
            shapes[name] = tuple(h.take("<Q") for _ in range(h.take("<I")))
            h.take("<I"), h.take("<Q")
        return out, shapes
