"""K-quants (q4_k_m, ...) made by llama.cpp's own quantizer, through llama-cpp-python's `llama_model_quantize`:
the optional extra `pip install 'medqlora[gguf]'` (it builds llama.cpp: about 13 minutes on 2 CPU cores)."""
from __future__ import annotations

import os
from pathlib import Path


def k_quantize(src: str | Path, dst: str | Path, quant: str) -> dict:
    """Quantize an f16 GGUF into `dst` (written under a temporary name, renamed when whole); tensors per type."""
    import ctypes

    import gguf
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}", None)
    if ftype is None:
        raise ValueError(f"llama-cpp-python {llama_cpp.__version__} has no quantization {quant!r}")
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp's llama_model_quantize to {quant} failed (return code {rc}); its log is above")
    tmp.rename(dst)
    counts: dict = {}
    for t in gguf.GGUFReader(str(dst)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts
