"""export: section (what is written besides the adapter, and where it goes)."""
from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from medqlora.config.base import Section

# GGUF quantizations the export writes itself (gguf's own quantizers), and the K-quants only llama.cpp makes.
GGUF_MAKEABLE = ("f32", "f16", "bf16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1")
NEEDS_LLAMA_CPP = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")



def llama_cpp_installed() -> bool:
    """Whether llama.cpp's quantizer is importable here (llama-cpp-python: pip install 'medqlora[gguf]')."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


class ExportConfig(Section):
    destination: str | None = Field(
        None, description="Also copy the exported adapter to this folder or fsspec URL (gs://bucket/path).")
    zip: bool = Field(False, description="Also write export.zip (the export folder, manifest inside) for a download; "
                      "on Colab the export notebook offers it.")
    formats: list[Literal["lora", "merged_16bit", "gguf"]] = Field(
        default_factory=lambda: ["lora"], description="lora: the adapter (always written). merged_16bit: the adapter "
        "folded into the base in 16-bit (serve with vLLM, TGI, transformers). gguf: one GGUF file made from the "
        "merged model (llama.cpp, Ollama, LM Studio).")
    merge_method: Literal["dequantized", "unsloth"] = Field(
        "dequantized", description="dequantized: the 4-bit base you trained on, dequantized, plus the LoRA update: "
        "the merged model answers as the evaluated adapter does. unsloth (GPU): Unsloth's save_pretrained_merged, "
        "onto the original 16-bit checkpoint: differs from the trained 4-bit model by the base's quantization error.")
    gguf_quant: str = Field("q8_0", description="GGUF quantization: f32, f16, bf16, q8_0 (near-lossless), q5_0, "
                            "q5_1, q4_0, q4_1; K-quants (q4_k_m, q5_k_m, q6_k, ...) through llama.cpp's quantizer where "
                            "llama-cpp-python is installed (pip install 'medqlora[gguf]'); without it asking for one "
                            "exports the other formats and says how to make it.")
    keep_failed: bool = Field(False, description="A merged model or GGUF whose check failed is set aside in "
                              "export.rejected/ and fails the export stage (the adapter and the formats that passed are "
                              "exported). true: keep and publish it anyway, marked FAILED in the report and "
                              "result; the stage succeeds.")

    @field_validator("formats")
    @classmethod
    def _lora_always(cls, v: list[str]) -> list[str]:
        return ["lora"] + [f for f in dict.fromkeys(v) if f != "lora"]

    @field_validator("gguf_quant")
    @classmethod
    def _known_quant(cls, v: str) -> str:
        
        v = v.lower()
        if v not in GGUF_MAKEABLE and v not in NEEDS_LLAMA_CPP:
            raise ValueError(f"unknown GGUF quantization {v!r}; choose one of {sorted(GGUF_MAKEABLE)}")
        return v

    @model_validator(mode="after")
    def _say_k_quant_early(self):
        
        if "gguf" in self.formats and self.gguf_quant in NEEDS_LLAMA_CPP and not llama_cpp_installed():
            import warnings

            warnings.warn(f"export.gguf_quant {self.gguf_quant} needs llama.cpp's quantizer, which is not here: pip "
                          "install 'medqlora[gguf]' (llama-cpp-python), or the export stage will write the other "
                          "formats and say how to make it (q8_0 needs nothing)")
        return self
