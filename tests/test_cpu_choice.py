"""The one CPU decision (issue #30): Unsloth's CPU mode (bf16) only where this CPU computes bf16 faster than fp32,
else transformers + peft in fp32, printed with both measured rates. Each kind of CPU is pretended by replacing what
hardware.cpu_rates() reads (the /proc/cpuinfo flags, torch's cpuinfo, the matmul timing); the decision itself runs
as it does for a user."""
from pathlib import Path

import pytest

import medical_fine_tuning
from medreason.config import hardware, run_plan
from medreason.model import for_inference
from medreason.config.errors import UserError

# The figures of the two CPUs in issue #30: this machine's kind (AVX512-BF16) and a 2-core AVX2-only EPYC.
NATIVE = dict(flags=("avx512_bf16",), rates=(151.0, 356.0), capability="AVX512")
EMULATED = dict(flags=(), rates=(75.7, 0.8), capability="AVX2")


@pytest.fixture(autouse=True)
def _fresh_rates():
    hardware.cpu_rates.cache_clear()
    yield
    hardware.cpu_rates.cache_clear()


def pretend_cpu(monkeypatch, flags, rates, capability):
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: (flags, "Pretend EPYC"))
    monkeypatch.setattr(hardware, "_torch_sees_bf16", lambda: bool(flags))
    monkeypatch.setattr(hardware, "_matmul_rates", lambda: rates)
    monkeypatch.setattr(hardware, "_torch_capability", lambda: capability)
    monkeypatch.setattr(run_plan, "_import_unsloth", lambda: None)  # Unsloth imports; whether it is used is the rule
    hardware.cpu_rates.cache_clear()


def demo_plan(*overrides):
    """The no-argument command's plan on this (CUDA-less) machine, with command-line overrides."""
    return run_plan.settle(vars(medical_fine_tuning), list(overrides), automatic=run_plan.automatic_preset)[1]


def reason(plan, start):
    return next(r for r in plan.reasons if r.startswith(start))


def test_a_cpu_with_native_bf16_trains_with_unsloth_in_bf16_and_says_both_rates(monkeypatch):
    pretend_cpu(monkeypatch, **NATIVE)
    plan = demo_plan()
    assert (plan.backend, plan.precision, plan.device) == ("unsloth", "bf16", "cpu")
    said = reason(plan, "backend:")
    assert "2.4x faster than fp32" in said and "fp32 151.0 GFLOP/s, bf16 356.0 GFLOP/s" in said
    assert "native bf16: avx512_bf16" in said and "Pretend EPYC" in said
    assert "WARNING" not in " ".join(plan.reasons)


def test_a_cpu_that_emulates_bf16_trains_with_transformers_in_fp32_and_says_why(monkeypatch, capsys):
    pretend_cpu(monkeypatch, **EMULATED)
    plan = demo_plan()
    assert (plan.backend, plan.precision) == ("transformers", "fp32")
    said = reason(plan, "backend:")
    assert "94.6x slower than fp32" in said and "fp32 75.7 GFLOP/s, bf16 0.8 GFLOP/s" in said
    assert "bf16 emulated" in said and "--BACKEND=unsloth forces" in said
    assert reason(plan, "precision:").startswith("precision: fp32") and "WARNING" not in capsys.readouterr().out
    assert not plan.load_in_4bit  # bitsandbytes' CPU 4-bit path belongs to Unsloth's CPU mode


@pytest.mark.parametrize("override", ["--BACKEND=unsloth", "--PRECISION=bf16"])
def test_bf16_forced_on_an_emulating_cpu_is_honoured_with_the_measured_slowdown(monkeypatch, capsys, override):
    pretend_cpu(monkeypatch, **EMULATED)
    plan = demo_plan(override)
    assert (plan.backend, plan.precision) == ("unsloth", "bf16")
    printed = capsys.readouterr().out
    assert "WARNING: bf16" in printed and "94.6x slower than fp32" in printed and "--BACKEND=transformers" in printed
    assert "WARNING" in reason(plan, "precision:")


def test_fp32_asked_on_a_native_bf16_cpu_goes_to_transformers_not_to_an_error(monkeypatch):
    pretend_cpu(monkeypatch, **NATIVE)
    plan = demo_plan("--PRECISION=fp32")
    assert (plan.backend, plan.precision) == ("transformers", "fp32")
    with pytest.raises(UserError, match="Unsloth's CPU mode always computes in bf16.*--BACKEND=transformers"):
        demo_plan("--PRECISION=fp32", "--BACKEND=unsloth")


def test_answering_on_a_cpu_uses_the_same_rule_and_its_precision(monkeypatch, capsys):
    pretend_cpu(monkeypatch, **EMULATED)
    assert for_inference.choose_backend("auto") == "transformers"
    assert "[load] backend: transformers + peft, because answering on a CPU" in capsys.readouterr().out
    cpu = hardware.Hardware("cpu", "CPU")
    assert hardware.choose_precision("auto", cpu, "transformers")[0] == "fp32"
    precision, why = hardware.choose_precision("auto", cpu, "unsloth")  # inference.py --backend unsloth
    assert precision == "bf16" and why.startswith("WARNING") and "94.6x slower" in why


def test_the_measurement_reads_this_cpu(monkeypatch):
    """The real timing and flags of the machine running the tests, not a pretended one."""
    rates = hardware.cpu_rates()
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    assert set(rates.flags) == {f for f in hardware.BF16_CPU_FLAGS if f in flags.split()}
    assert rates.fp32_gflops > 1 and rates.bf16_gflops > 0.05  # the slowest emulated bf16 reported is 0.8
    assert hardware.compute_rate("fp32") == rates.fp32_gflops and hardware.compute_rate("bf16") == rates.bf16_gflops
    assert hardware.cpu_rates() is rates  # measured once per process
    with pytest.raises(ValueError, match="fp32' and 'bf16' only"):
        hardware.compute_rate("fp16")
