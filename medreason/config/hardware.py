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
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from medreason.config.errors import UserError

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 natively
RATE_SIZES = (128, 256, 512, 1024)  # square matmul sizes tried, smallest first, until one takes RATE_STEP_S
RATE_STEP_S = 0.005  # one matmul this long is big enough to time (and an emulated bf16 one stops the climb)
RATE_BUDGET_S = 0.015  # seconds of repeats per size: the best repeat counts (another process may share the cores)
# Unsloth's CUDA allocator setting (unsloth_zoo/__init__.py sets it when imported): fewer fragmentation OOMs on a
# 15 GB T4. PyTorch reads it once, when CUDA starts, and detect() starts CUDA before Unsloth is imported, so it is
# set here first, unless the user set an allocator variable (theirs wins, as in Unsloth).
ALLOC_CONF = "expandable_segments:True"
ALLOC_CONF_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF")


@dataclass(frozen=True)
class CpuRates:
    """What this CPU computes per second, measured: the one fact the CPU backend/precision choice and the time
    estimates rest on."""
    fp32_gflops: float  # best fp32 matmul rate, GFLOP/s, with torch's threads
    bf16_gflops: float  # the same in bf16 (emulated unless native_bf16)
    native_bf16: bool  # the CPU has bf16 instructions (BF16_CPU_FLAGS, or torch's cpuinfo says so)
    flags: tuple[str, ...]  # which of BF16_CPU_FLAGS it has
    capability: str = ""  # torch's CPU capability: the widest vector code torch runs here (AVX2, AVX512...)
    model: str = ""  # /proc/cpuinfo's model name, to name the CPU beside any figure

    @property
    def bf16_faster(self) -> bool:
        """bf16 is the faster dtype here: native instructions, confirmed by the timing."""
        return self.native_bf16 and self.bf16_gflops > self.fp32_gflops

    def describe(self) -> str:
        """"fp32 151 GFLOP/s, bf16 356 GFLOP/s (native bf16: avx512_bf16; torch AVX512)"."""
        kind = f"native bf16: {', '.join(self.flags)}" if self.native_bf16 else "bf16 emulated: no avx512_bf16/amx_bf16"
        return (f"fp32 {self.fp32_gflops:.1f} GFLOP/s, bf16 {self.bf16_gflops:.1f} GFLOP/s measured on "
                f"{self.model or 'this CPU'} ({kind}; torch {self.capability or '?'})")

    def bf16_slowdown(self) -> float:
        """How many times slower bf16 computes than fp32 here (below 1: faster)."""
        return self.fp32_gflops / max(self.bf16_gflops, 1e-9)


@functools.cache
def cpu_rates() -> CpuRates:
    """This CPU's measured fp32 and bf16 matmul rates and its bf16 flags, once per process (~0.1-0.2 s)."""
    flags, model = _cpu_flags()
    fp32, bf16 = _matmul_rates()
    return CpuRates(fp32_gflops=fp32, bf16_gflops=bf16, native_bf16=bool(flags) or _torch_sees_bf16(), flags=flags,
                    capability=_torch_capability(), model=model)


def compute_rate(precision: str) -> float:
    """GFLOP/s this CPU computes a matmul at in `precision` ("fp32" or "bf16"), measured once per process."""
    rates = cpu_rates()
    if precision == "fp32":
        return rates.fp32_gflops
    if precision == "bf16":
        return rates.bf16_gflops
    raise ValueError(f"compute_rate({precision!r}): a CPU rate is measured for 'fp32' and 'bf16' only")


def _cpu_flags() -> tuple[tuple[str, ...], str]:
    """(which of BF16_CPU_FLAGS /proc/cpuinfo lists, the CPU's model name); empty where there is no /proc (macOS)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return (), platform.processor()
    field = lambda key: next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), "")  # noqa: E731
    present = set(field("flags").split())
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in present), field("model name")


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


def _matmul_rates() -> tuple[float, float]:
    """(fp32, bf16) GFLOP/s: two alternating rounds, the best of each kept, so a neighbour process that takes the
    cores for a moment slows one round, not one dtype."""
    import torch
    rounds = [(_matmul_gflops(torch.float32), _matmul_gflops(torch.bfloat16)) for _ in range(2)]
    return max(r[0] for r in rounds), max(r[1] for r in rounds)


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
            while once is None or time.perf_counter() - start < RATE_BUDGET_S:
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
    set_cuda_allocator(torch)
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
        return _cuda_precision(requested, hardware, backend)
    if hardware.device == "cpu":
        return _cpu_precision(requested, backend)
    if requested == "fp16":
        raise UserError(f"PRECISION='fp16' on {hardware.name}: fp16 mixed precision needs a CUDA GPU. Fix: "
                        f"--PRECISION=auto (fp32) or bf16.")
    if requested == "bf16":
        return "bf16", f"bf16 on {hardware.name} (PRECISION='bf16')"
    return "fp32", f"fp32 full precision on {hardware.name}"


def _cpu_precision(requested: str, backend: str) -> tuple[str, str]:
    """On a CPU: fp32 unless Unsloth's CPU mode (always bf16) or PRECISION='bf16' was chosen; bf16 on a CPU that
    emulates it is honoured with a warning giving the measured slowdown (the same rule as runtime.choose_backend)."""
    if requested == "fp16":
        raise UserError("PRECISION='fp16' on a CPU: fp16 mixed precision needs a CUDA GPU. Fix: --PRECISION=auto "
                        "(fp32, or bf16 where this CPU computes it natively) or bf16.")
    if backend == "unsloth" and requested not in ("auto", "bf16"):
        raise UserError(f"PRECISION={requested!r} on a CPU with the Unsloth backend: Unsloth's CPU mode always "
                        f"computes in bf16. Fix: --PRECISION=auto, or --BACKEND=transformers for {requested}.")
    rates = cpu_rates()
    if backend != "unsloth" and requested != "bf16":
        return "fp32", f"fp32 full precision on this CPU ({rates.describe()})"
    why = "Unsloth's CPU mode computes in bf16" if backend == "unsloth" else "PRECISION='bf16'"
    if rates.bf16_faster:
        return "bf16", f"bf16 ({why}; this CPU computes it natively: {rates.describe()})"
    return "bf16", bf16_slowdown_warning(rates, why)


def bf16_slowdown_warning(rates: CpuRates, why: str) -> str:
    """The warning for bf16 asked of a CPU that computes it no faster than fp32."""
    return (f"WARNING: bf16 ({why}) on a CPU that computes bf16 {rates.bf16_slowdown():.1f}x slower than fp32 "
            f"({rates.describe()}): training will take about that many times longer than --BACKEND=transformers "
            f"--PRECISION=auto (fp32)")


def _cuda_precision(requested: str, hardware: Hardware, backend: str) -> tuple[str, str]:
    gpu = hardware.describe()
    if requested == "bf16" and not hardware.native_bf16:
        raise UserError(f"PRECISION='bf16' on {gpu}: bf16 is native from compute capability 8.0 (A100, L4, RTX 30xx "
                        f"and newer); this GPU only emulates it, and Unsloth loads it in fp16. Fix: --PRECISION=auto "
                        f"(fp16 here) or --PRECISION=fp16.")
    if requested == "fp32" and backend == "unsloth" and hardware.native_bf16:
        # unsloth 2026.10.9, models/rl.py (the trainer's precision block): with fp16 and bf16 both False it sets
        # args.bf16 = True wherever the GPU supports bf16, so "fp32" would train in bf16 while the run records fp32.
        raise UserError(f"PRECISION='fp32' with the Unsloth backend on {gpu}: Unsloth's trainer turns bf16 mixed "
                        f"precision on by itself on a GPU with native bf16, so the run would not be fp32. Fix: "
                        f"--PRECISION=auto (bf16), or --BACKEND=transformers for true fp32.")
    if requested != "auto":
        return requested, f"{requested} on {gpu} (PRECISION={requested!r})"
    if hardware.native_bf16:
        return "bf16", f"bf16 mixed precision: {gpu} computes bf16 natively (compute capability >= 8.0)"
    return "fp16", (f"fp16 mixed precision: {gpu} has no native bf16 (compute capability < 8.0, as on a T4 or "
                    f"V100), so the model is loaded and trained in fp16")


def torch_dtype(precision: str):
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def set_cuda_allocator(torch) -> None:
    """ALLOC_CONF into the environment before CUDA starts, as Unsloth would (not on Windows/WSL, where Unsloth leaves
    it off because expandable segments fail there, nor under UNSLOTH_VLLM_STANDBY, which needs it off)."""
    if not (torch.version.cuda or torch.version.hip) or any(name in os.environ for name in ALLOC_CONF_VARS):
        return
    if os.name == "nt" or "microsoft" in platform.release().lower() or os.environ.get("UNSLOTH_VLLM_STANDBY", "0") != "0":
        return
    # torch >= 2.10 reads the unified name (and warns about the CUDA one); older versions only the CUDA one
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    os.environ["PYTORCH_ALLOC_CONF" if (major, minor) >= (2, 10) else "PYTORCH_CUDA_ALLOC_CONF"] = ALLOC_CONF
