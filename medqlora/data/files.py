"""Opening a data file: what kind it is, how it is compressed, what its bytes are, and every way that can fail.

Every failure is a DataError naming the file and the fix, never a library's own error: a file that is not there,
a folder, a named pipe (it would block), a symlink loop, a compression the suffix does not match (or whose module
is missing), a stream cut or corrupt part-way (named with the last line read), text in UTF-16/UTF-32, binary data.
"""
from __future__ import annotations

import errno
import lzma
import os
import stat
import zlib
from contextlib import contextmanager
from pathlib import Path

from medqlora.config import is_local_path


class DataError(ValueError):
    """The data cannot be used as configured; the message says what to change."""


KINDS = ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"), (".tsv", "tsv"),
         (".parquet", "parquet"))
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
         (b"PK\x03\x04", "a ZIP archive"), (b"PAR1", "Parquet"), (b"SQLite format 3", "an SQLite database"),
         (b"%PDF", "a PDF"))
# Errors that decompressors and file systems raise while a stream is read (not only when it is opened).
STREAM_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)
HEAD_BYTES = 4096
SUPPORTED = "use .jsonl, .json, .csv, .tsv or .parquet (optionally .gz, .bz2, .xz or .zst)"


def compression_of(source: str) -> str | None:
    return next((c for s, c in COMPRESSIONS.items() if source.lower().endswith(s)), None)


def _sniff_kind(source: str) -> str | None:
    """The kind of an extensionless local file (a Hugging Face cache blob) from its first bytes."""
    try:
        with open(os.path.expanduser(source), "rb") as f:
            head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return None
    return "parquet" if head.startswith(b"PAR1") else "jsonl" if head[:1] == b"{" else "json" if head[:1] == b"[" \
        else None


def kind_of(source: str) -> str:
    """jsonl | json | csv | tsv | parquet for files and URLs (by the name given, not a symlink's target); hub for
    a hub dataset name."""
    if not (is_local_path(source) or "://" in source):
        return "hub"
    p = source.lower()
    for s in COMPRESSIONS:
        p = p.removesuffix(s)
    for suffix, kind in KINDS:
        if p.endswith(suffix):
            return kind
    if "://" not in source and not Path(p).suffix and check_local(source) is None:
        kind = _sniff_kind(source)
        if kind:
            return kind
    raise DataError(f"unsupported file type: {source}; {SUPPORTED}")


def check_local(source: str) -> None:
    """A local path must be a regular file (or a symlink to one): refuse what is missing, loops or would block."""
    if "://" in source:
        return None
    path = os.path.expanduser(source)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{source} is a symlink loop (a link that points back to itself); point it at the "
                            "data file") from None
        if os.path.islink(path):
            raise DataError(f"{source} is a symlink to {os.readlink(path)}, which does not exist; fix the link") \
                from None
        raise DataError(f"data file not found: {source}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{source} is a folder; give one data file in it")
    if stat.S_ISFIFO(st.st_mode):
        raise DataError(f"{source} is a named pipe (FIFO), not a file: reading it would wait for a writer; write the "
                        "data to a regular file")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{source} is not a regular file (a device or socket); write the data to a regular file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{source} cannot be read (permission denied); fix its permissions")
    return None


def _raw_head(source: str, n: int = 16) -> bytes:
    import fsspec

    try:
        with fsspec.open(source, "rb").open() as f:
            return f.read(n)
    except FileNotFoundError:
        raise DataError(f"data file not found: {source}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"could not open {source}: {type(e).__name__}: {e}") from None


def open_bytes(source: str):
    """The file's bytes, decompressed as its suffix says, after checking that its first bytes agree."""
    import fsspec

    check_local(source)
    comp = compression_of(source)
    head = _raw_head(source)
    found = next((name for magic, name in MAGIC if head.startswith(magic)), None)
    base = source[: len(source) - len(next(s for s in COMPRESSIONS if source.lower().endswith(s)))] if comp \
        else source
    if comp and not head:
        raise DataError(f"{source} is empty (no rows); give a file with data in it")
    if comp and found != comp:
        what = f"{found}" if found else "not compressed (its first bytes are " + repr(head[:8]) + ")"
        raise DataError(f"{source} is named .{source.rsplit('.', 1)[1]} ({comp}) but is {what}; rename it to "
                        f"match what it is (e.g. {Path(base).name})")
    if not comp and found in COMPRESSIONS.values():
        raise DataError(f"{source} is {found}-compressed but its name does not say so; add the suffix (e.g. "
                        f"{Path(source).name}{next(s for s, c in COMPRESSIONS.items() if c == found)})")
    if comp == "zstd":
        try:
            import zstandard  # noqa: F401  (fsspec reads .zst only with it)
        except ImportError:
            raise DataError(f"{source} is zstd-compressed and the zstandard module is not installed: pip install "
                            "zstandard, or decompress it (zstd -d)") from None
    try:
        return fsspec.open(source, "rb", compression=comp).open()
    except FileNotFoundError as e:
        raise DataError(f"data file not found: {source}") from e
    except (OSError, ImportError, ValueError) as e:
        raise DataError(f"could not open {source}: {type(e).__name__}: {e}") from e


@contextmanager
def reading(source: str, where=lambda: None):
    """Turn an error raised while the stream is read (a cut or corrupt gzip/bz2/xz/zstd stream, a disk error)
    into a refusal naming the file, how far it was read, and the fix."""
    try:
        yield
    except DataError:
        raise
    except Exception as e:
        if not (isinstance(e, STREAM_ERRORS) or type(e).__module__.startswith("zstandard")):
            raise
        line = where()
        at = f" after line {line}" if line else " at its start"
        comp = compression_of(source)
        kind = f"its {comp} stream is cut or corrupt" if comp and not isinstance(e, UnicodeError) else "it failed"
        raise DataError(f"{source} cannot be read{at}: {kind} ({type(e).__name__}: {e}); the rest of the file would "
                        "be lost, so none of it is used: re-download or re-create the file") from None


ENCODINGS = ((b"\x00\x00\xfe\xff", "UTF-32 (big-endian)"), (b"\xff\xfe\x00\x00", "UTF-32 (little-endian)"),
             (b"\xfe\xff", "UTF-16 (big-endian)"), (b"\xff\xfe", "UTF-16 (little-endian)"))


def _wide_encoding(start: bytes) -> str | None:
    """UTF-16/UTF-32 without a byte-order mark: the zero bytes of mostly-ASCII text fall at fixed offsets."""
    s = start[: len(start) - len(start) % 4]
    if len(s) < 8 or s.count(0) < len(s) // 3:
        return None
    zero = lambda off, step: s[off::step].count(0) / len(s[off::step])  # noqa: E731
    for name, zeros, other, step in (("UTF-32 (little-endian)", (1, 2, 3), 0, 4),
                                     ("UTF-32 (big-endian)", (0, 1, 2), 3, 4),
                                     ("UTF-16 (little-endian)", (1,), 0, 2), ("UTF-16 (big-endian)", (0,), 1, 2)):
        if all(zero(o, step) > 0.9 for o in zeros) and zero(other, step) < 0.5:
            return name
    return None


def text_problem(source: str, start: bytes, kind: str) -> str | None:
    """Why the first bytes of a text file (decompressed) cannot be read as UTF-8 text at all, or None. One bad
    byte is not this: it is the one line's problem."""
    if not start:
        return None
    enc = next((name for bom, name in ENCODINGS if start.startswith(bom)), None) or _wide_encoding(start)
    if enc:
        return (f"{source} is text in {enc}, not UTF-8; save it as UTF-8 (e.g. iconv -f {enc.split()[0]} -t UTF-8 "
                f"{Path(source).name} > {Path(source).stem}-utf8{Path(source).suffix})")
    found = next((name for magic, name in MAGIC if start.startswith(magic)), None)
    if found:
        fix = "name it .parquet" if found == "Parquet" else "extract the data file from it" \
            if found == "a ZIP archive" else "decompress it or add its suffix" if found in COMPRESSIONS.values() \
            else "give the data file"
        return f"{source} is {found}, not {kind.upper()} text; {fix}"
    odd = sum(1 for b in start if b < 9 or 13 < b < 32 or b == 127)
    if odd / len(start) > 0.05:
        return (f"{source} looks like a binary file ({odd} of its first {len(start)} bytes are control bytes), not "
                f"{kind.upper()} text; check that this is the file you meant")
    return None


def head_bytes(source: str) -> bytes:
    """The first KiBs of the file, decompressed."""
    with reading(source), open_bytes(source) as f:
        return f.read(HEAD_BYTES)


def check_text(source: str, kind: str) -> None:
    """Refuse a text file whose first bytes are not UTF-8 text at all (UTF-16, a PDF, binary data)."""
    why = text_problem(source, head_bytes(source), kind)
    if why:
        raise DataError(why)
