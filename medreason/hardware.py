"""The machine a run is on, and the one precision decision that training, evaluation and inference all use.

bf16 is chosen only where the GPU computes it natively: compute capability 8.0 or newer (Ampere, Ada, Hopper).
torch's `is_bf16_supported()` is not asked: by default it counts emulation and answers True on a T4 (sm75), while
Unsloth (by capability) loads the model in fp16 there and its trainer then refuses bf16.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError

PRECISIONS = ("auto", "fp16", "bf16", "fp32")


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda", "mps" or "cpu"
    name: str
    capability: tuple[int, int] | None = None  # CUDA compute capability

    @property
    def native_bf16(self) -> bool:
        return self.device == "cuda" and self.capability is not None and self.capability >= (8, 0)

    def describe(self) -> str:
        return f"{self.name} (sm{self.capability[0]}{self.capability[1]})" if self.capability else self.name


def detect() -> Hardware:
    import torch
    if torch.cuda.is_available():
        return Hardware("cuda", torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return Hardware("mps", "Apple MPS")
    return Hardware("cpu", "CPU")


def choose_precision(requested: str, hardware: Hardware, backend: str) -> tuple[str, str]:
    """(precision, why): 'bf16', 'fp16' or 'fp32' for the weights' compute dtype and the trainer's mixed precision."""
    if requested not in PRECISIONS:
        raise UserError(f"PRECISION={requested!r}: choose one of {', '.join(repr(p) for p in PRECISIONS)}.")
    if hardware.device == "cuda":
        return _cuda_precision(requested, hardware)
    if hardware.device == "cpu" and backend == "unsloth":
        if requested not in ("auto", "bf16"):
            raise UserError(f"PRECISION={requested!r} on a CPU with the Unsloth backend: Unsloth's CPU mode always "
                            f"computes in bf16. Fix: --PRECISION=auto, or --BACKEND=transformers for {requested}.")
        return "bf16", "bf16 (Unsloth's CPU mode computes in bf16)"
    if requested == "fp16":
        raise UserError(f"PRECISION='fp16' on {hardware.name}: fp16 mixed precision needs a CUDA GPU. Fix: "
                        f"--PRECISION=auto (fp32) or bf16.")
    if requested == "bf16":
        return "bf16", f"bf16 on {hardware.name} (PRECISION='bf16')"
    return "fp32", f"fp32 full precision on {hardware.name}"


def _cuda_precision(requested: str, hardware: Hardware) -> tuple[str, str]:
    gpu = hardware.describe()
    if requested == "bf16" and not hardware.native_bf16:
        raise UserError(f"PRECISION='bf16' on {gpu}: bf16 is native from compute capability 8.0 (A100, L4, RTX 30xx "
                        f"and newer); this GPU only emulates it, and Unsloth loads it in fp16. Fix: --PRECISION=auto "
                        f"(fp16 here) or --PRECISION=fp16.")
    if requested != "auto":
        return requested, f"{requested} on {gpu} (PRECISION={requested!r})"
    if hardware.native_bf16:
        return "bf16", f"bf16 mixed precision: {gpu} computes bf16 natively (compute capability >= 8.0)"
    return "fp16", (f"fp16 mixed precision: {gpu} has no native bf16 (compute capability < 8.0, as on a T4 or "
                    f"V100), so the model is loaded and trained in fp16")


def torch_dtype(precision: str):
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
