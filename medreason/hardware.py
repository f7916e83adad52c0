"""The machine a run is on, and the one precision decision that training, evaluation and inference all use.

bf16 is chosen only where the GPU computes it natively: compute capability 8.0 or newer (Ampere, Ada, Hopper).
torch's `is_bf16_supported()` is not asked: by default it counts emulation and answers True on a T4 (sm75), while
Unsloth (by capability) loads the model in fp16 there and its trainer then refuses bf16.

On a CPU the same question is asked of the CPU: bf16 is native only with AVX512-BF16 or AMX (Intel Cooper Lake /
Sapphire Rapids, AMD Zen 4 and newer); elsewhere torch emulates it, ~100x slower than fp32. `cpu_rates()` reads the
flags and times one matmul of each dtype (a few tens of ms), so the choice and the time estimates use this machine's
own rates.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 natively
RATE_SIZES = (128, 256, 512, 1024)  # square matmul sizes tried, smallest first, until one takes RATE_STEP_S
RATE_STEP_S = 0.005  # one matmul this long is big enough to time (and an emulated bf16 one stops the climb)
RATE_BUDGET_S = 0.015  # seconds of repeats per size: the best repeat counts (another process may share the cores)


@dataclass(frozen=True)
class CpuRates:
    """What this CPU computes per second, measured: the one fact the CPU backend/precision choice and the time
    estimates rest on."""
    fp32_gflops: float  # best fp32 matmul rate, GFLOP/s, with torch's threads
    bf16_gflops: float  # the same in bf16 (emulated unless native_bf16)
    native_bf16: bool  # the CPU has bf16 instructions (BF16_CPU_FLAGS, or torch's cpuinfo says so)
    flags: tuple[str, ...]  # which of BF16_CPU_FLAGS it has
    capability: str = ""  # torch's CPU capability: the widest vector code torch runs here (AVX2, AVX512...)

    @property
    def bf16_faster(self) -> bool:
        """bf16 is the faster dtype here: native instructions, confirmed by the timing."""
        return self.native_bf16 and self.bf16_gflops > self.fp32_gflops

    def describe(self) -> str:
        """"fp32 151 GFLOP/s, bf16 356 GFLOP/s (native bf16: avx512_bf16; torch AVX512)"."""
        kind = f"native bf16: {', '.join(self.flags)}" if self.native_bf16 else "bf16 emulated: no avx512_bf16/amx_bf16"
        return (f"fp32 {self.fp32_gflops:.1f} GFLOP/s, bf16 {self.bf16_gflops:.1f} GFLOP/s ({kind}; torch "
                f"{self.capability or '?'})")

    def bf16_slowdown(self) -> float:
        """How many times slower bf16 computes than fp32 here (below 1: faster)."""
        return self.fp32_gflops / max(self.bf16_gflops, 1e-9)


@functools.cache
def cpu_rates() -> CpuRates:
    """This CPU's measured fp32 and bf16 matmul rates and its bf16 flags, once per process (~30-100 ms)."""
    import torch
    flags = _cpu_flags()
    native = bool(flags) or _torch_sees_bf16()
    return CpuRates(fp32_gflops=_matmul_gflops(torch.float32), bf16_gflops=_matmul_gflops(torch.bfloat16),
                    native_bf16=native, flags=flags, capability=_torch_capability())


def compute_rate(precision: str) -> float:
    """GFLOP/s this CPU computes a matmul at in `precision` ("fp32" or "bf16"), measured once per process."""
    rates = cpu_rates()
    if precision == "fp32":
        return rates.fp32_gflops
    if precision == "bf16":
        return rates.bf16_gflops
    raise ValueError(f"compute_rate({precision!r}): a CPU rate is measured for 'fp32' and 'bf16' only")


def _cpu_flags() -> tuple[str, ...]:
    """Which of BF16_CPU_FLAGS /proc/cpuinfo lists (empty where there is no /proc, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in present)


def _torch_sees_bf16() -> bool:
    """torch's own cpuinfo (where /proc/cpuinfo is missing): AVX512-BF16 or AMX tiles."""
    import torch
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def _torch_capability() -> str:
    import torch
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return ""


def _matmul_gflops(dtype) -> float:
    """The best rate of square matmuls in dtype: sizes grow until one matmul takes RATE_STEP_S (an emulated bf16 one
    does at the first size), each size repeated for RATE_BUDGET_S."""
    import torch
    best = 0.0
    with torch.inference_mode():
        for n in RATE_SIZES:
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            a @ b  # warm-up: thread pool, oneDNN kernel choice
            start, once = time.perf_counter(), None
            while time.perf_counter() - start < RATE_BUDGET_S or once is None:
                t = time.perf_counter()
                a @ b
                once = min(once or 1e9, time.perf_counter() - t)
            best = max(best, 2 * n**3 / once / 1e9)
            if once >= RATE_STEP_S:
                break
    return best


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
