"""The GPU check in one call: the real default path of every stage on a Llama-3.2-3B-shaped model, timed and guarded.

    bash bench/gpu_check.sh                         # on a GPU machine (the kit on the path; see the README)
    bash bench/gpu_check.sh --small                 # anywhere: a tiny model, what needs CUDA skipped and said so
    bash bench/gpu_check.sh --only sft_transformers,evaluate   # a rerun of some parts (the model is made again)

Each part runs the project's own command lines (medical_fine_tuning.py, evaluate.py, inference.py,
preference_tuning.py, rl_tuning.py when it exists) in its own process with its own time limit, so one failure or an
out-of-memory leaves the other parts' figures. Everything lands in OUT ($OUT when set, else bench/gpu_out/):
summary.json (each part: status, seconds, figures or the reason it failed or was skipped) and gpu_check.log.

The model is Llama-3.2-3B-Instruct's config (bench/gpu_model/, 3.21 B parameters, vocabulary 128,256) with random
weights made on the GPU, so speed and memory are the real model's while the answers are noise. It pretends to be a
Colab T4 where that decides anything: fp16 (--PRECISION=fp16), 4-bit base weights, 8-bit AdamW, batch 1 x 8,
MAX_SEQ_LENGTH 2048 with every row at full length, Unsloth's gradient checkpointing; peak memory must stay under a T4's
15 GiB. The Unsloth leg runs with --BACKEND=unsloth, so a failed `import unsloth` is an error, not a second
transformers run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = ROOT / "bench" / "gpu_model"  # Llama-3.2-3B config + the offline tokenizer (bench/make_gpu_model.py)
DEMO_ROWS = ROOT / "medreason" / "demo_data" / "medical_demo.jsonl"  # travels with the repo (shared/ does not)
BUDGET_S = 480  # the whole check's wall clock: the device allows 600 s a command and 15 minutes in all, so a
#               rerun of one part (--only) still fits on the warm machine
T4_MEMORY = 15 * 2**30  # a T4's usable memory: the default run's peak must stay under it
GOAL_SPEED, GOAL_MEMORY = 1.8, 0.5  # Unsloth vs transformers: at least 1.8x the speed at at most 0.5x the memory
# The T4 recipe (the script's GPU defaults, written out so a default that changes shows up here) and the check's size.
GPU = {"seq": 2048, "steps": 10, "accum": 8, "val": 8, "eval_samples": 2, "new_tokens": 32, "eval_rows": 3}
SMALL = {"seq": 512, "steps": 2, "accum": 2, "val": 2, "eval_samples": 1, "new_tokens": 8, "eval_rows": 2}
# Shrunk shape for --small (CPU): the same vocabulary, so the tokenizer and the logits width are the real ones.
SMALL_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 16}
QUESTION = "A 58-year-old man has crushing chest pain and ST elevation in II, III and aVF. Which artery is blocked?"


# ----------------------------------------------------------------------------------------------------------------
# Parts that run inside a child process (python bench/gpu_check.py --child ...)
# ----------------------------------------------------------------------------------------------------------------
def probe_env() -> dict:
    """Versions and where each package was loaded from (the kit or the machine), the GPU, and pip's own check."""
    import importlib.metadata as md
    import platform
    import torch
    names = ["torch", "transformers", "accelerate", "huggingface_hub", "peft", "trl", "datasets", "bitsandbytes",
             "unsloth", "unsloth_zoo", "torchao", "triton", "xformers", "rouge_score", "wandb", "protobuf",
             "sentencepiece", "numpy"]
    versions = {}
    for name in names:
        try:
            dist = md.distribution(name)
            versions[name] = f"{dist.version} ({'kit' if 'gpu_kit' in str(dist.locate_file('')) else 'machine'})"
        except md.PackageNotFoundError:
            versions[name] = None
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    cuda = torch.cuda.is_available()
    facts = {"python": platform.python_version(), "versions": versions, "cuda": cuda,
             "pip_check": (check.stdout + check.stderr).strip().splitlines()[:40]}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        facts |= {"gpu": props.name, "capability": list(torch.cuda.get_device_capability(0)),
                  "gpu_memory_gib": round(props.total_memory / 2**30, 1), "torch_cuda": torch.version.cuda}
    else:
        facts["cpu"] = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                             if line.startswith("model name")), platform.processor())
    return facts


def probe_unsloth() -> dict:
    """`import unsloth` first (as the trainer does), then the CUDA kernels the T4 path needs: bitsandbytes' 4-bit
    quantization and 8-bit AdamW (from the one CUDA library the kit keeps), and Unsloth's model class."""
    import unsloth  # noqa: F401  (first: it patches transformers, trl and peft at import)
    from unsloth import FastLanguageModel  # noqa: F401
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import torch
    x = torch.randn(256, 256, device="cuda", dtype=torch.float16)
    packed, state = F.quantize_4bit(x, quant_type="nf4")
    error = (F.dequantize_4bit(packed, state) - x).abs().mean().item()
    weight = torch.nn.Parameter(torch.randn(4096, 64, device="cuda"))
    optimizer = bnb.optim.AdamW8bit([weight], lr=1e-3)
    weight.grad = torch.randn_like(weight)
    before = weight.detach().clone()
    optimizer.step()
    return {"unsloth": unsloth.__version__, "bitsandbytes": bnb.__version__,
            "bnb_library": str(getattr(getattr(bnb, "cextension", None), "lib", None))[:200],
            "nf4_mean_abs_error": round(error, 4), "adamw8bit_moved": bool((weight != before).any().item()),
            "PYTORCH_ALLOC_CONF": os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}


def make_model(work: Path, small: bool) -> dict:
    """The Llama-3.2-3B-shaped model with random weights (made on the GPU when there is one), its tokenizer, and the
    rows: medical-o1 rows whose chain of thought runs past MAX_SEQ_LENGTH, and ready-made DPO pairs."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    size = SMALL if small else GPU
    config = AutoConfig.from_pretrained(MODEL_FILES)
    if small:
        for key, value in SMALL_SHAPE.items():
            setattr(config, key, value)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model_dir = work / "model"
    full = work / "model-16bit" if device == "cuda" else model_dir
    model.save_pretrained(full)
    del model
    for item in MODEL_FILES.iterdir():
        if item.name != "config.json" and item.is_file():
            shutil.copy(item, full / item.name)
    facts = {"prequantized_4bit": False}
    if device == "cuda":
        facts = prequantize(full, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows, lengths = make_rows(tokenizer, size["seq"], size["steps"] * size["accum"] + size["val"])
    with open(work / "rows.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(work / "pairs.jsonl", "w", encoding="utf-8") as f:
        for i, row in enumerate(rows[:8]):
            other = rows[(i + 1) % len(rows)]
            f.write(json.dumps({"prompt": row["Question"],
                                "chosen": f"<think>{row['Complex_CoT'][:1500]}</think>\n<response>{row['Response']}"
                                          f"</response>",
                                "rejected": f"<think>{other['Complex_CoT'][:600]}</think>\n<response>"
                                            f"{other['Response']}</response>"}) + "\n")
    with open(work / "mcq.jsonl", "w", encoding="utf-8") as f:  # for the RL stage: verifiable letters
        for i, row in enumerate(rows[:8]):
            letters = {k: rows[(i + j) % len(rows)]["Response"][:120] for j, k in enumerate("ABCD")}
            f.write(json.dumps({"question": row["Question"], "options": letters, "answer": "ABCD"[i % 4]}) + "\n")
    return {**facts, "parameters": params, "vocab_size": config.vocab_size, "tokenizer_ids": len(tokenizer),
            "made_on": device, "rows": len(rows), "row_tokens_min": min(lengths), "row_tokens_max": max(lengths)}


def prequantize(full: Path, model_dir: Path) -> dict:
    """The 16-bit folder saved again in 4-bit (NF4, double quantization, fp16 compute), as the default MODEL_NAME
    (unsloth/Llama-3.2-3B-Instruct-bnb-4bit) is: every later part loads 2 GB without quantizing. Where that fails,
    the 16-bit folder is used (quantized at each load), and the reason is recorded."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    try:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float16)
        model = AutoModelForCausalLM.from_pretrained(full, quantization_config=quantization, dtype=torch.float16,
                                                     device_map={"": 0})
        model.save_pretrained(model_dir)
        for item in full.iterdir():
            if not item.name.startswith(("model", "config")) and item.is_file():
                shutil.copy(item, model_dir / item.name)
        shutil.rmtree(full)
        return {"prequantized_4bit": True}
    except Exception as e:  # the check goes on with the 16-bit folder; the reason is in the summary
        shutil.rmtree(model_dir, ignore_errors=True)
        full.rename(model_dir)
        return {"prequantized_4bit": False, "prequantize_error": f"{type(e).__name__}: {e}"[:300]}


def make_rows(tokenizer, max_len: int, count: int) -> tuple[list[dict], list[int]]:
    """Demo rows made unique (a case number) and long: the chain of thought repeats until the row passes max_len."""
    demo = [json.loads(line) for line in DEMO_ROWS.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows, lengths = [], []
    for i in range(count):
        base = demo[i % len(demo)]
        cot = base["Complex_CoT"]
        while True:
            row = {"Question": f"Case {i + 1}. {base['Question']}", "Complex_CoT": cot, "Response": base["Response"]}
            text = f"{row['Question']}\n<think>{row['Complex_CoT']}</think>\n<response>{row['Response']}</response>"
            n = len(tokenizer(text)["input_ids"])
            if n > max_len + 64:
                break
            cot = f"{cot}\n\n{base['Complex_CoT']}"
        rows.append(row)
        lengths.append(n)
    return rows, lengths


def run_measured(script: str, args: list[str], measure: Path) -> None:
    """Run a project script as `python script args` would, recording the seconds and the peak CUDA memory of each
    Trainer.train() call and of the whole process. The hook waits for transformers.trainer to be imported by the
    script itself, so Unsloth is still imported first, as in a real run."""
    import atexit
    import importlib.abc
    import importlib.util
    record = {"train": [], "process_peak_allocated": None}

    def wrap(trainer_cls):
        original = trainer_cls.train

        def train(self, *a, **k):
            import torch
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            try:
                return original(self, *a, **k)
            finally:
                history = getattr(getattr(self, "state", None), "log_history", None) or []
                final = next((e for e in reversed(history) if "train_runtime" in e), {})
                entry = {"trainer": type(self).__name__, "seconds": time.perf_counter() - start,
                         "steps": getattr(getattr(self, "state", None), "global_step", None),
                         "train_runtime": final.get("train_runtime"),
                         "tokens": max((e.get("num_tokens", 0) for e in history), default=0),
                         "last_loss": next((e["loss"] for e in reversed(history) if "loss" in e), None)}
                if cuda:
                    torch.cuda.synchronize()
                    entry |= {"peak_allocated": torch.cuda.max_memory_allocated(),
                              "peak_reserved": torch.cuda.max_memory_reserved()}
                record["train"].append(entry)
        trainer_cls.train = train

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "transformers.trainer":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                wrap(module.Trainer)
            spec.loader.exec_module = exec_module
            return spec

    def dump():
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            record["process_peak_allocated"] = torch.cuda.max_memory_allocated()
        measure.write_text(json.dumps(record))

    sys.meta_path.insert(0, Hook())
    atexit.register(dump)
    import runpy
    sys.argv = [script, *args]
    sys.path.insert(0, str(ROOT))
    runpy.run_path(str(ROOT / script), run_name="__main__")


def child(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "probe_env":
        print("RESULT " + json.dumps(probe_env()))
    elif kind == "probe_unsloth":
        print("RESULT " + json.dumps(probe_unsloth()))
    elif kind == "make_model":
        print("RESULT " + json.dumps(make_model(Path(argv[1]), argv[2] == "small")))
    elif kind == "run":
        run_measured(argv[2], argv[3:], Path(argv[1]))


# ----------------------------------------------------------------------------------------------------------------
# The driver: no torch here, so a crashed or stuck part never takes the check with it
# ----------------------------------------------------------------------------------------------------------------
class Check:
    def __init__(self, out: Path, work: Path, small: bool, only: set[str] | None, budget: float):
        self.out, self.work, self.small, self.only = out, work, small, only
        self.deadline = time.monotonic() + budget
        self.summary = {"mode": "small (CPU)" if small else "GPU", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "budget_s": budget, "parts": {}}

    def save(self) -> None:
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")

    def note(self, name: str, status: str, **fields) -> dict:
        entry = {"status": status, **fields}
        self.summary["parts"][name] = entry
        self.save()
        line = f"[check] {name}: {status}"
        if "seconds" in fields:
            line += f" in {fields['seconds']:.0f} s"
        if fields.get("reason"):
            line += f" ({fields['reason']})"
        print(line, flush=True)
        return entry

    def wanted(self, name: str) -> bool:
        return self.only is None or name in self.only

    def run(self, name: str, command: list[str], limit: float, env: dict | None = None,
            accept: dict[int, str] | None = None) -> dict:
        """One part in its own process group, its output prefixed into the log, stopped at its limit."""
        left = self.deadline - time.monotonic()
        if left < 20:
            return self.note(name, "skipped", reason=f"the check's {self.summary['budget_s']:.0f} s budget is spent")
        limit = min(limit, left)
        print(f"[check] {name}: {' '.join(command[1:])[:400]} (limit {limit:.0f} s)", flush=True)
        start = time.monotonic()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True)
        tail, result, stopped = [], None, []

        def stop():
            stopped.append(True)
            os.killpg(process.pid, signal.SIGKILL)
        timer = threading.Timer(limit, stop)
        timer.start()
        try:
            for line in process.stdout:
                line = line.rstrip("\n")
                if line.startswith("RESULT "):
                    result = json.loads(line[7:])
                print(f"  {name}| {line}", flush=True)
                tail = (tail + [line])[-15:]
            process.wait()
        finally:
            timer.cancel()
        seconds = time.monotonic() - start
        if process.returncode == 0:
            return {"status": "ok", "seconds": seconds, "result": result}
        if accept and process.returncode in accept and not stopped:
            return {"status": "ok", "seconds": seconds, "result": result, "note": accept[process.returncode]}
        reason = f"stopped at its {limit:.0f} s limit" if stopped else f"exit status {process.returncode}"
        return {"status": "failed", "seconds": seconds, "reason": reason, "log_tail": tail}

    def part(self, name: str, command: list[str], limit: float, env: dict | None = None,
             accept: dict[int, str] | None = None, **extra) -> dict:
        if not self.wanted(name):
            return self.note(name, "skipped", reason="not in --only")
        outcome = self.run(name, command, limit, env, accept)
        status = outcome.pop("status")
        return self.note(name, status, **outcome, **extra)


def trainer_figures(measure: Path, rows_per_step: int) -> dict:
    """s/step and tokens/s from the trainer's own log (its train_runtime and trl's num_tokens), peak CUDA memory of
    the training call and of the whole process: all read by the measuring hook (run_measured)."""
    if not measure.is_file():
        return {}
    record = json.loads(measure.read_text())
    figures = {}
    if record["train"]:
        train = record["train"][0]
        seconds = train["train_runtime"] or train["seconds"]
        steps = train["steps"] or 0
        figures |= {"steps": steps, "train_seconds": round(seconds, 1), "rows_per_step": rows_per_step,
                    "seconds_per_step": round(seconds / max(steps, 1), 2), "tokens": train["tokens"],
                    "tokens_per_second": round(train["tokens"] / seconds, 1), "last_loss": train["last_loss"]}
        if "peak_allocated" in train:
            figures["peak_train_gib"] = round(train["peak_allocated"] / 2**30, 2)
            figures["peak_reserved_train_gib"] = round(train["peak_reserved"] / 2**30, 2)
    if record["process_peak_allocated"]:
        figures["peak_process_gib"] = round(record["process_peak_allocated"] / 2**30, 2)
        figures["under_t4_memory"] = record["process_peak_allocated"] < T4_MEMORY
    return figures


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--child":
        child(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="a tiny model; what needs CUDA is skipped (automatic with no "
                                                        "CUDA GPU)")
    p.add_argument("--only", help="comma-separated parts to run (env and model always run)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"the whole check's seconds (default {BUDGET_S})")
    args = p.parse_args(argv)
    out = Path(os.environ.get("OUT") or ROOT / "bench" / "gpu_out")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("GPU_CHECK_WORK") or "/tmp/gpu_check_work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    only = set(args.only.split(",")) if args.only else None
    me = [sys.executable, str(Path(__file__).resolve()), "--child"]

    # 0. The machine: versions (kit or machine), the GPU, pip's check. No CUDA means the small mode, said so.
    check = Check(out, work, args.small, only, args.budget)
    env = check.run("env", me + ["probe_env"], 120)
    check.note("env", env.pop("status"), **env)
    facts = env.get("result") or {}
    if not facts.get("cuda") and not args.small:
        print("[check] no CUDA GPU here: the small mode (a tiny model; the parts that need CUDA are skipped, each "
              "saying so)", flush=True)
        check.small = True
    small = check.small
    check.summary["mode"] = "small (CPU)" if small else "GPU"
    size = SMALL if small else GPU
    os.environ.update({"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(work),
                       "TOKENIZERS_PARALLELISM": "false"})

    # 1. `import unsloth` on CUDA with these versions, and the bitsandbytes kernels the T4 path uses.
    if small:
        check.note("unsloth_import", "skipped", reason="needs CUDA: Unsloth's GPU path and bitsandbytes' CUDA kernels")
    else:
        check.part("unsloth_import", me + ["probe_unsloth"], 150)

    # 2. The model: Llama-3.2-3B's shape, random weights, the offline tokenizer; rows at full length.
    made = check.part("model", me + ["make_model", str(work), "small" if small else "gpu"], 150)
    if made["status"] != "ok":
        check.summary["verdict"] = "the model could not be made; nothing after it ran"
        check.save()
        return 1
    model = str(work / "model")

    # 3. Training, the T4 recipe, on each backend: s/step, tokens/s, peak memory.
    recipe = [f"--MODEL_NAME={model}", f"--DATASET={work / 'rows.jsonl'}", f"--MAX_SEQ_LENGTH={size['seq']}",
              "--BATCH_SIZE=1", f"--GRAD_ACCUM={size['accum']}", f"--MAX_STEPS={size['steps']}",
              "--GRADIENT_CHECKPOINTING=True", f"--VAL_SIZE={size['val']}", "--EVAL_STEPS=0", "--LOGGING_STEPS=1",
              "--WARMUP_STEPS=2", f"--EVAL_SAMPLES={size['eval_samples']}", f"--MAX_NEW_TOKENS={size['new_tokens']}",
              "--MAX_THINK_WORDS=None", "--PUSH_TO_HUB=False", "--REPORT_TO=wandb"]
    if not small:
        recipe += ["--PRECISION=fp16", "--LOAD_IN_4BIT=True"]  # a T4: fp16 (no native bf16), QLoRA
    legs = [("sft_unsloth", "unsloth", 200), ("sft_transformers", "transformers", 220)]
    for name, backend, limit in legs:
        if small and backend == "unsloth":
            check.note(name, "skipped", reason="needs CUDA: the Unsloth leg is the T4 path (its CPU mode is another "
                                               "path); the small mode trains the transformers leg only")
            continue
        run_dir = work / name
        measure = work / f"measure-{name}.json"
        outcome = check.part(name, me + ["run", str(measure), "medical_fine_tuning.py", *recipe,
                                         f"--BACKEND={backend}", f"--OUTPUT_DIR={run_dir}"], limit)
        outcome["figures"] = trainer_figures(measure, size["accum"])
        check.save()
    compare(check)

    # 4. The saved adapter, answered: evaluate.py with both engines, inference.py on one question.
    adapter = next((work / n / "adapter" for n in ("sft_unsloth", "sft_transformers")
                    if (work / n / "adapter" / "adapter_config.json").is_file()), None)
    if adapter is None:
        for name in ("evaluate_continuous", "evaluate_batched", "inference", "preference", "rl"):
            check.note(name, "skipped", reason="no trained adapter: both training legs failed")
    else:
        check.summary["adapter"] = str(adapter)
        for engine in ("continuous", "batched"):
            check.part(f"evaluate_{engine}", [sys.executable, "evaluate.py", "--adapter", str(adapter), "--limit",
                                              str(size["eval_rows"]), "--max-new-tokens", str(size["new_tokens"]),
                                              "--engine", engine, "--no-base", "--output",
                                              str(work / f"eval-{engine}")], 120)
        check.part("inference", [sys.executable, "inference.py", "--adapter", str(adapter), "--question", QUESTION,
                                 "--max-new-tokens", str(size["new_tokens"])], 90,
                   accept={3: "exit status 3: the answer has no closing tags, as random weights give"})
        # 5. The preference stage: DPO on ready-made pairs (random weights make sampled candidates ties), 2 steps.
        measure = work / "measure-preference.json"
        pref = check.part("preference", me + [
            "run", str(measure), "preference_tuning.py", f"--SFT_ADAPTER={adapter}",
            f"--DATASET={work / 'pairs.jsonl'}", "--MAX_STEPS=2", "--GRAD_ACCUM=1", "--BATCH_SIZE=1",
            "--EVAL_SAMPLES=1", f"--MAX_NEW_TOKENS={size['new_tokens']}", "--JUDGE=reference", "--WARMUP_STEPS=0",
            "--LOGGING_STEPS=1", f"--MAX_SEQ_LENGTH={size['seq']}", f"--OUTPUT_DIR={work / 'dpo'}",
            *(["--PRECISION=fp16"] if not small else [])], 150)
        pref["figures"] = trainer_figures(measure, 1)
        check.save()
        # 6. The RL stage, when it has landed (rl_tuning.py).
        if not (ROOT / "rl_tuning.py").is_file():
            check.note("rl", "skipped", reason="rl_tuning.py is not in this tree")
        else:
            measure = work / "measure-rl.json"
            rl = check.part("rl", me + [
                "run", str(measure), "rl_tuning.py", f"--SFT_ADAPTER={adapter}", f"--DATASET={work / 'mcq.jsonl'}",
                "--TRAIN_QUESTIONS=4", "--EVAL_SAMPLES=1", "--NUM_GENERATIONS=2", "--BATCH_SIZE=2", "--GRAD_ACCUM=1",
                "--MAX_STEPS=2", f"--MAX_NEW_TOKENS={size['new_tokens']}", "--BENCHMARKS=", "--WARMUP_STEPS=0",
                "--LOGGING_STEPS=1", f"--MAX_SEQ_LENGTH={size['seq']}", f"--OUTPUT_DIR={work / 'rl'}",
                *(["--PRECISION=fp16"] if not small else [])], 150)
            rl["figures"] = trainer_figures(measure, 2)
            check.save()
    failed = [n for n, p in check.summary["parts"].items() if p["status"] == "failed"]
    check.summary["verdict"] = f"failed: {', '.join(failed)}" if failed else "every part that ran passed"
    check.save()
    print(f"[check] {check.summary['verdict']}; summary: {out / 'summary.json'}", flush=True)
    return 1 if failed else 0


def compare(check: Check) -> None:
    """Unsloth vs transformers at 2048 tokens: the speed and memory ratios against the project's goal."""
    parts = check.summary["parts"]
    fast, base = (parts.get(n, {}).get("figures", {}) for n in ("sft_unsloth", "sft_transformers"))
    if fast.get("seconds_per_step") and base.get("seconds_per_step"):
        result = {"speed_ratio": round(base["seconds_per_step"] / fast["seconds_per_step"], 2),
                  "goal": f">= {GOAL_SPEED}x the speed at <= {GOAL_MEMORY}x the memory"}
        if fast.get("peak_train_gib") and base.get("peak_train_gib"):
            result["memory_ratio"] = round(fast["peak_train_gib"] / base["peak_train_gib"], 2)
            result["goal_met"] = result["speed_ratio"] >= GOAL_SPEED and result["memory_ratio"] <= GOAL_MEMORY
        check.summary["unsloth_vs_transformers"] = result
        print(f"[check] Unsloth vs transformers: {result}", flush=True)
    check.save()


if __name__ == "__main__":
    sys.exit(main())
