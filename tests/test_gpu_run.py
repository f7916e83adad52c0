"""The GPU run's decisions, checked on a CPU by pretending to be the GPU: precision on a T4 and an A100, forced
settings, the date in Llama-3's chat template, logins, the order of push and exports, the demo's own folder and
resume across base models."""
import http.server
import json
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest
import torch
from trl import SFTConfig  # noqa: F401  imported before any test pretends to have CUDA (its import asks torch.cuda)

import medical_fine_tuning
from conftest import ROOT
from medreason.config import hardware, run_plan, settings, tracking
from medreason.model import for_inference, for_training as modeling
from medreason.publish import hub
from medreason.train import sft
from medreason.config.errors import UserError
from medreason.answers.prompts import TEMPLATE_DATE, generation_prompt, get_style

T4 = hardware.Hardware("cuda", "Tesla T4", (7, 5))
A100 = hardware.Hardware("cuda", "NVIDIA A100-SXM4-40GB", (8, 0))
FAKE_TOKEN = "hf_FAKEtokenForGpuRunTests0123456789abcd"


def pretend_gpu(monkeypatch, name: str, capability: tuple[int, int]):
    """torch.cuda answers as that GPU would, including is_bf16_supported()'s True for an emulated bf16 on a T4."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)  # TrainingArguments selects cuda:0


def script_settings(*overrides: str):
    """The trainer's real constants with command-line overrides, settled and planned as main() does: (cfg, plan)."""
    return run_plan.settle(vars(medical_fine_tuning), list(overrides), automatic=run_plan.automatic_preset)


def layered_settings(*overrides: str):
    """The layered values alone, frozen (no plan: no backend choice, so no Unsloth import): (cfg, origins)."""
    return settings.resolve(vars(medical_fine_tuning), list(overrides), automatic=run_plan.automatic_preset)


def test_a_t4_gets_fp16_in_the_plan_the_trainer_config_and_the_unsloth_load(monkeypatch, tmp_path):
    pretend_gpu(monkeypatch, "Tesla T4", (7, 5))
    monkeypatch.setattr(run_plan, "_import_unsloth", lambda: None)  # as if Unsloth imported on that GPU
    assert hardware.detect() == T4 and not T4.native_bf16
    cfg, plan = script_settings()
    assert (plan.device, plan.backend, plan.precision, plan.optim) == ("cuda", "unsloth", "fp16", "adamw_8bit")
    assert not plan.demo and cfg.PRESET == "" and any("no native bf16" in reason for reason in plan.reasons)
    config = sft.build_sft_config(cfg, plan, [], tmp_path)
    assert config.fp16 is True and config.bf16 is False
    assert modeling.unsloth_load_kwargs(cfg, plan, cfg.MODEL_NAME)["dtype"] is torch.float16


def test_an_a100_gets_bf16_everywhere(monkeypatch, tmp_path):
    pretend_gpu(monkeypatch, "NVIDIA A100-SXM4-40GB", (8, 0))
    monkeypatch.setattr(run_plan, "_import_unsloth", lambda: None)
    cfg, plan = script_settings()
    assert plan.precision == "bf16"
    config = sft.build_sft_config(cfg, plan, [], tmp_path)
    assert config.bf16 is True and config.fp16 is False
    assert modeling.unsloth_load_kwargs(cfg, plan, cfg.MODEL_NAME)["dtype"] is torch.bfloat16


def test_forced_precision_is_checked_against_the_hardware():
    with pytest.raises(UserError, match=r"PRECISION='bf16' on Tesla T4 \(sm75\).*compute capability 8.0.*Fix"):
        hardware.choose_precision("bf16", T4, "unsloth")
    assert hardware.choose_precision("fp32", T4, "transformers")[0] == "fp32"
    assert hardware.choose_precision("fp16", A100, "unsloth")[0] == "fp16"
    cpu = hardware.Hardware("cpu", "CPU")
    with pytest.raises(UserError, match="fp16 mixed precision needs a CUDA GPU"):
        hardware.choose_precision("fp16", cpu, "transformers")
    with pytest.raises(UserError, match="Unsloth's CPU mode always computes in bf16"):
        hardware.choose_precision("fp32", cpu, "unsloth")
    assert hardware.choose_precision("auto", cpu, "unsloth")[0] == "bf16"
    assert hardware.choose_precision("auto", cpu, "transformers")[0] == "fp32"
    with pytest.raises(UserError, match="PRECISION='half': choose one of"):
        hardware.choose_precision(layered_settings("--PRECISION=half")[0].PRECISION, cpu, "transformers")


def test_the_inference_loader_uses_the_same_precision_decision(monkeypatch, tiny_adapter):
    # Only the hardware answer is pretended here: loading itself stays on this CPU (device="cpu").
    monkeypatch.setattr(hardware, "detect", lambda: T4)
    loaded = for_inference.load(str(tiny_adapter), backend="transformers", device="cpu")
    assert loaded.model.dtype == torch.float16
    monkeypatch.setattr(hardware, "detect", lambda: A100)
    assert for_inference.load(str(tiny_adapter), backend="transformers", device="cpu").model.dtype == torch.bfloat16


def llama_tokenizer(tmp_path, embedded_dir):
    """The embedded tokenizer with Llama-3.2's own chat template (trl ships a copy), which reads today's date."""
    import trl
    from pathlib import Path
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(embedded_dir)
    tok.chat_template = (Path(trl.__file__).parent / "chat_templates" / "llama3_2.jinja").read_text()
    folder = tmp_path / "llama-template"
    tok.save_pretrained(folder)
    return folder


def test_llama_templates_get_one_fixed_date_at_training_and_inference(tmp_path, embedded_dir):
    from transformers import AutoTokenizer
    folder = llama_tokenizer(tmp_path, embedded_dir)
    style = get_style("think_response")
    today = datetime.now().strftime("%d %b %Y")
    unpinned = generation_prompt(AutoTokenizer.from_pretrained(folder), "What is gout?", style)
    assert f"Today Date: {today}" in unpinned  # what the template does left alone: the prompt changes every day
    trained_with = modeling.load_tokenizer(str(folder))
    prompt = generation_prompt(trained_with, "What is gout?", style)
    assert f"Today Date: {TEMPLATE_DATE}" in prompt and (today == TEMPLATE_DATE or today not in prompt)
    # Saved with the adapter and loaded back for inference: the very same prompt, pinned once (not twice).
    trained_with.save_pretrained(tmp_path / "adapter")
    reloaded = modeling.load_tokenizer(str(tmp_path / "adapter"))
    assert generation_prompt(reloaded, "What is gout?", style) == prompt
    assert reloaded.chat_template == trained_with.chat_template


def test_a_template_that_reads_the_clock_without_date_string_is_refused(tmp_path, embedded_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(embedded_dir)
    tok.chat_template = "{{ strftime_now('%d %b %Y') }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(tmp_path / "clock")
    with pytest.raises(UserError, match="strftime_now.*date_string"):
        modeling.load_tokenizer(str(tmp_path / "clock"))


def test_the_push_token_comes_from_the_environment_dotenv_or_a_saved_login(monkeypatch, tmp_path):
    from huggingface_hub import constants, get_token
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))  # where `hf auth login` saves it
    with pytest.raises(UserError, match="hf auth login.*HF_TOKEN.*dry-run"):
        hub.check_push(True, "me/model", True, "run")
    (tmp_path / "token").write_text("hf_savedByHfAuthLogin0123456789abcdefgh")
    assert hub.check_push(True, "me/model", True, "run").mode == "push"  # the saved login is enough
    (tmp_path / ".env").write_text(f"HF_TOKEN={FAKE_TOKEN}\n")
    tracking.load_secrets(tmp_path / ".env")
    assert get_token() == FAKE_TOKEN  # .env (via the environment) comes before the saved login
    monkeypatch.setenv("HF_TOKEN", "hf_realEnvironmentWins0123456789abcdefgh")
    tracking.load_secrets(tmp_path / ".env")
    assert get_token() == "hf_realEnvironmentWins0123456789abcdefgh"


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers /api/whoami-v2 the way the Hub does, with the status and body the test sets."""
    answer: tuple[int, dict] = (200, {})

    def do_GET(self):  # noqa: N802
        status, body = self.answer
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    yield FakeHub
    server.shutdown()


def whoami(role: str, orgs=()):
    return (200, {"name": "alice", "orgs": [{"name": o} for o in orgs],
                  "auth": {"accessToken": {"displayName": "t", "role": role}}})


def test_write_access_is_checked_with_whoami_before_training(fake_hub):
    fake_hub.answer = whoami("write", orgs=["clinic"])
    assert "may push to alice/med" in hub.check_write_access("alice/med")
    assert "may push to clinic/med" in hub.check_write_access("clinic/med")
    with pytest.raises(UserError, match=r"belongs to 'alice'.*not to 'bob'. Fix: --HF_REPO_ID=alice/med"):
        hub.check_write_access("bob/med")
    fake_hub.answer = whoami("read")
    with pytest.raises(UserError, match="read-only.*write access"):
        hub.check_push(True, "alice/med", True, "run")
    fake_hub.answer = (401, {"error": "Invalid credentials in Authorization header"})
    with pytest.raises(UserError, match="refused the token.*hf auth login"):
        hub.check_write_access("alice/med")


def test_wandb_goes_online_when_the_user_is_logged_in(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # where `wandb login` saves the key
    assert tracking.setup_wandb("wandb", "p", str(tmp_path)) == ["wandb"]
    assert os.environ["WANDB_MODE"] == "offline"  # not logged in: offline run files
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    assert tracking.wandb_login() == "`wandb login` (~/.netrc)"
    tracking.setup_wandb("wandb", "p", str(tmp_path))
    assert "WANDB_MODE" not in os.environ  # logged in: online, as the user expects
    monkeypatch.setenv("WANDB_MODE", "disabled")
    tracking.setup_wandb("wandb", "p", str(tmp_path))
    assert os.environ["WANDB_MODE"] == "disabled"  # the user's own choice wins


def test_a_second_run_in_the_same_process_gets_its_own_wandb_folder(monkeypatch, tmp_path):
    """A notebook runs the trainer twice: the second run's W&B files go to its own folder, a user's WANDB_DIR wins."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    tracking.setup_wandb("wandb", "p", str(tmp_path / "first"))
    tracking.setup_wandb("wandb", "p", str(tmp_path / "second"))
    assert os.environ["WANDB_DIR"] == str((tmp_path / "second").resolve()) and os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "mine"))
    tracking.setup_wandb("wandb", "p", str(tmp_path / "third"))
    assert os.environ["WANDB_DIR"] == str(tmp_path / "mine")


def test_the_demo_writes_to_its_own_folder(monkeypatch):
    monkeypatch.setattr(run_plan, "_import_unsloth", lambda: "not wanted in this test")
    cfg, plan = script_settings()  # this machine has no CUDA GPU: the demo preset, chosen automatically
    assert plan.demo and cfg.PRESET == "demo" and cfg.OUTPUT_DIR == "outputs/demo-smollm2-135m"
    assert cfg.OUTPUT_DIR != medical_fine_tuning.OUTPUT_DIR and cfg.origins["OUTPUT_DIR"] == "preset demo"
    assert any("DEMO MODE" in r and cfg.OUTPUT_DIR in r for r in plan.reasons)
    cfg, plan = script_settings("--OUTPUT_DIR=outputs/mine")
    assert cfg.OUTPUT_DIR == "outputs/mine" and cfg.origins["OUTPUT_DIR"] == "command line"


def test_a_checkpoint_of_another_base_model_is_refused_before_loading(tiny_model_dir, demo_rows, tmp_path):
    from datasets import Dataset
    from medreason.answers.prompts import to_conversation
    cfg, _ = layered_settings(f"--MODEL_NAME={tiny_model_dir}", f"--OUTPUT_DIR={tmp_path}", "--MAX_STEPS=1",
                             "--SAVE_STEPS=1", "--VAL_SIZE=0", "--EVAL_STEPS=0", "--MAX_SEQ_LENGTH=256",
                             "--BATCH_SIZE=2", "--GRAD_ACCUM=1", "--TARGET_MODULES=q_proj,v_proj")
    plan = run_plan.Plan("transformers", "cpu", "fp32", False, "adamw_torch")
    model, tokenizer = modeling.load_for_training(cfg, plan, str(tiny_model_dir))
    style = get_style("think_response")
    trainer = sft.build_trainer(model, tokenizer,
                                     Dataset.from_list([to_conversation(r, style) for r in demo_rows[:2]]), None,
                                     sft.build_sft_config(cfg, plan, [], tmp_path / "checkpoints"))
    sft.train(trainer, None, tmp_path, sft.run_info(cfg, plan, style))
    assert sft.resume_point(tmp_path / "checkpoints", cfg, plan).endswith("checkpoint-1")  # same run: resumes
    other, _ = layered_settings("--MODEL_NAME=embedded", "--TARGET_MODULES=q_proj,v_proj")
    with pytest.raises(UserError, match=r"MODEL_NAME '.*tiny-llama.*' -> 'embedded'.*Fix"):
        sft.resume_point(tmp_path / "checkpoints", other, plan)


def test_bad_trainer_settings_fail_before_anything_loads(tmp_path):
    cfg, _ = layered_settings("--LR_SCHEDULER=cosin")
    plan = run_plan.Plan("transformers", "cpu", "fp32", False, "adamw_torch")
    with pytest.raises(UserError, match="LR_SCHEDULER='cosin'.*Did you mean 'cosine'"):
        sft.build_sft_config(cfg, plan, [], tmp_path)


def test_an_export_that_fails_never_costs_the_push(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Push first, then exports; each failure is reported, the retry command printed, the adapter kept. Both fail for
    real: the push offline (HF_HUB_OFFLINE=1, conftest), the merge on a folder where its config.json must go."""
    from medreason.data.readers import DEMO_DATASET
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    out = tmp_path / "run"
    (out / "merged" / "config.json").mkdir(parents=True)
    result = medical_fine_tuning.main([
        f"--MODEL_NAME={tiny_model_dir}", f"--DATASET={DEMO_DATASET}", "--BACKEND=transformers", "--MAX_STEPS=1",
        "--VAL_SIZE=2", "--EVAL_STEPS=0", "--EVAL_SAMPLES=1", "--MAX_NEW_TOKENS=4", "--MAX_SEQ_LENGTH=256",
        "--SAVE_STEPS=1", "--REPORT_TO=none", "--TARGET_MODULES=q_proj,v_proj", f"--OUTPUT_DIR={out}",
        "--PUSH_TO_HUB=True", "--HF_REPO_ID=me/med", "--SAVE_MERGED=True"])
    printed = capsys.readouterr().out
    assert medical_fine_tuning.exit_status(result) == 4
    push_failed = printed.index("[publish] the push to me/med FAILED")
    assert push_failed < printed.index("[export] merged 16-bit model FAILED (IsADirectoryError")  # push first
    assert f"python publish.py --output-dir {out} --repo-id me/med" in printed
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "hub_upload" / "README.md").is_file()
    assert not (out / "adapter" / "README.md").exists()  # peft's placeholder card (a local cache path) is gone


# --- issue #31: the GPU path read against the pinned sources (trl 1.15.0, unsloth 2026.10.9) ---------------------

FP16_ON_CPU = run_plan.Plan("transformers", "cpu", "fp16", False, "adamw_torch")  # a T4's precision, run on this CPU


def flag_quantized(peft_model):
    """What loading in 4-bit sets (transformers' bitsandbytes quantizer); trl reads it through the peft wrapper."""
    peft_model.get_base_model().is_loaded_in_4bit = True


def assert_trainable_fp32(model):
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}


def test_a_quantized_model_trained_in_fp16_keeps_fp32_lora_weights_in_sft_and_dpo(tiny_model_dir, tiny_adapter,
                                                                                    demo_rows, tmp_path, capsys):
    """trl casts a 4-bit model's trainable weights to bf16 in both trainers' __init__; fp16's gradient scaler would
    then fail at the first step on a T4 ("_amp_foreach_non_finite_check_and_unscale_cuda" not implemented for
    'BFloat16'). After each trainer is built, every trainable weight is fp32 again."""
    from datasets import Dataset
    from test_training import settings
    from medreason.preference import dpo, pairs as preference
    from medreason.model.for_training import load_for_training
    from medreason.preference.pairs import Pair
    from medreason.answers.prompts import to_conversation
    cfg = settings(tmp_path)
    model, tokenizer = load_for_training(cfg, run_plan.Plan("transformers", "cpu", "fp32", False, "adamw_torch"),
                                         str(tiny_model_dir))
    flag_quantized(model)
    rows = Dataset.from_list([to_conversation(r, get_style("think_response")) for r in demo_rows[:4]])
    config = sft.build_sft_config(cfg, FP16_ON_CPU, [], tmp_path / "sft")
    assert config.fp16
    trainer = sft.build_trainer(model, tokenizer, rows, rows, config)
    assert_trainable_fp32(trainer.model)
    assert "trainable LoRA tensors that trl cast to bf16 for a quantized model are fp32 again" in capsys.readouterr().out

    folder, info = dpo.sft_facts(str(tiny_adapter))
    dpo_cfg = type(cfg)(**{**vars(cfg), "BETA": 0.1, "MAX_SEQ_LENGTH": 128, "OUTPUT_DIR": str(tmp_path / "dpo")})
    policy = dpo.load_policy(folder, info, run_plan.Plan("transformers", "cpu", "fp32", False, "adamw_torch"), dpo_cfg)
    flag_quantized(policy)
    pair = Pair("What causes scurvy?", "<think>\nVitamin C.\n</think>\n<response>\nVitamin C deficiency.\n</response>",
                "bananas")
    examples = [preference.to_dpo_example(pair, get_style("think_response"), tokenizer)] * 2
    dpo_trainer = dpo.build_trainer(policy, tokenizer, examples, dpo.build_dpo_config(
        dpo_cfg, FP16_ON_CPU, [], tmp_path / "dpo" / "checkpoints"), "transformers")
    assert_trainable_fp32(dpo_trainer.model)
    assert "are fp32 again" in capsys.readouterr().out


def test_a_t4_whose_unsloth_import_fails_says_so_loudly_before_falling_back(monkeypatch, capsys):
    pretend_gpu(monkeypatch, "Tesla T4", (7, 5))
    why = "unsloth failed to import: ModuleNotFoundError: No module named 'regex'"
    monkeypatch.setattr(run_plan, "_import_unsloth", lambda: why)
    plan = script_settings()[1]
    assert (plan.backend, plan.precision) == ("transformers", "fp16")
    warning = next(line for line in capsys.readouterr().out.splitlines() if "WARNING" in line)
    assert "No module named 'regex'" in warning and "falls back to transformers + peft" in warning
    assert "2x slower" in warning and "--BACKEND=unsloth (--backend unsloth in evaluate.py" in warning
    assert "to make this an error" in warning
    with pytest.raises(UserError, match="BACKEND='unsloth' but unsloth failed to import.*Fix"):
        script_settings("--BACKEND=unsloth")


def test_the_cuda_allocator_setting_is_in_the_environment_before_cuda_starts(monkeypatch):
    """unsloth_zoo sets PYTORCH_ALLOC_CONF=expandable_segments:True when imported, but PyTorch reads it when CUDA
    starts, and hardware.detect() (settings step) starts CUDA before Unsloth is imported."""
    pretend_gpu(monkeypatch, "Tesla T4", (7, 5))
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # a CUDA build of torch
    for name in hardware.ALLOC_CONF_VARS:
        monkeypatch.delenv(name, raising=False)
    seen = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: seen.append(
        os.environ.get("PYTORCH_ALLOC_CONF")) or "Tesla T4")
    assert hardware.detect() == T4
    assert seen == ["expandable_segments:True"]  # torch >= 2.10 reads the unified name
    monkeypatch.delenv("PYTORCH_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")  # the user's own setting wins
    hardware.detect()
    assert seen[-1] is None and os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"


UNSLOTH_STUB = ("import sys\nprint('unsloth imported with transformers already loaded:', 'transformers' in "
                "sys.modules, flush=True)\nclass FastLanguageModel:\n    pass\n")


def python(code: str, tmp_path, **env) -> subprocess.CompletedProcess:
    """A fresh interpreter, whose `import unsloth` finds a stub that records whether transformers came first (the
    order is what is checked: the real Unsloth warns, and patches less, when it does)."""
    (tmp_path / "unsloth").mkdir(exist_ok=True)
    (tmp_path / "unsloth" / "__init__.py").write_text(UNSLOTH_STUB)
    environment = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", **env}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=300)


def test_unsloth_is_imported_before_transformers_wherever_it_will_be_used(tmp_path, tiny_model_dir):
    load = python("from medreason.config import errors\nfrom medreason.model import for_inference\ntry:\n    for_inference.load('/no/adapter', backend='unsloth')\n"
                  "except errors.UserError as e:\n    print('refused:', e)", tmp_path)
    assert "transformers already loaded: False" in load.stdout and "refused: /no/adapter" in load.stdout, load.stderr
    # the training script, up to its dry run (settings, backend, trainer config, data, preflight)
    script = subprocess.run([sys.executable, "medical_fine_tuning.py", f"--MODEL_NAME={tiny_model_dir}",
                             "--BACKEND=unsloth", "--DATASET=demo", "--DRY_RUN=True", f"--OUTPUT_DIR={tmp_path}/run",
                             "--REPORT_TO=none"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert "transformers already loaded: False" in script.stdout, script.stdout[-2000:] + script.stderr[-2000:]
    # a second process under accelerate launch quiets transformers and datasets without importing them
    quiet = python("import sys\nfrom medreason.config import distributed\ndistributed.quiet_other_processes()\n"
                   "import os\nsys.stderr.write(repr([m for m in ('transformers', 'datasets') if m in sys.modules]) + "
                   "os.environ['TRANSFORMERS_VERBOSITY'] + os.environ['HF_DATASETS_DISABLE_PROGRESS_BARS'])",
                   tmp_path, RANK="1", WORLD_SIZE="2")
    assert quiet.stderr.endswith("[]error1"), quiet.stderr[-2000:]


def test_fp32_with_unsloth_on_an_ampere_gpu_is_refused_because_its_trainer_would_train_in_bf16(monkeypatch):
    pretend_gpu(monkeypatch, "NVIDIA A100-SXM4-40GB", (8, 0))
    monkeypatch.setattr(run_plan, "_import_unsloth", lambda: None)
    with pytest.raises(UserError, match=r"PRECISION='fp32' with the Unsloth backend on NVIDIA A100.*turns bf16.*"
                                        r"Fix: --PRECISION=auto \(bf16\), or --BACKEND=transformers"):
        script_settings("--PRECISION=fp32")
    plan = script_settings("--PRECISION=fp32", "--BACKEND=transformers")[1]
    assert (plan.backend, plan.precision) == ("transformers", "fp32")
    pretend_gpu(monkeypatch, "Tesla T4", (7, 5))  # Unsloth keeps an fp32 load in fp32 where bf16 is not native
    assert script_settings("--PRECISION=fp32")[1].precision == "fp32"


def test_unsloths_eval_batch_change_is_said_when_its_trainer_makes_it(tiny_model_dir, demo_rows, tmp_path, capsys,
                                                                      monkeypatch):
    """On a GPU, Unsloth's rewritten SFTTrainer (unsloth 2026.10.9, models/rl.py, the eval-batch block) lowers an eval
    batch of 8 to the train batch and raises eval_accumulation_steps; on a CPU it keeps stock trl, so the rule is put
    into the trainer class here. The run must say what changed; an untouched eval batch says nothing."""
    import trl
    from datasets import Dataset
    from test_training import settings
    from medreason.model.for_training import load_for_training
    from medreason.answers.prompts import to_conversation

    class UnslothRule(trl.SFTTrainer):
        def __init__(self, *args, **kwargs):
            config = kwargs["args"]
            if config.per_device_eval_batch_size == 8 and config.per_device_train_batch_size < 8:
                config.per_device_eval_batch_size = config.per_device_train_batch_size
                config.eval_accumulation_steps = config.gradient_accumulation_steps
            super().__init__(*args, **kwargs)

    cfg = settings(tmp_path)
    plan = run_plan.Plan("transformers", "cpu", "fp32", False, "adamw_torch")
    model, tokenizer = load_for_training(cfg, plan, str(tiny_model_dir))
    rows = Dataset.from_list([to_conversation(r, get_style("think_response")) for r in demo_rows[:4]])
    monkeypatch.setattr(trl, "SFTTrainer", UnslothRule)
    for eval_batch, said in ((8, True), (4, False)):
        config = sft.build_sft_config(type(cfg)(**{**vars(cfg), "EVAL_BATCH_SIZE": eval_batch}), plan, [],
                                           tmp_path / f"sft{eval_batch}")
        trainer = sft.build_trainer(model, tokenizer, rows, rows, config)
        out = capsys.readouterr().out
        # What our code reads back from the trainer it built and says (the rule above is Unsloth's, not under test).
        assert (f"EVAL_BATCH_SIZE 8 -> {cfg.BATCH_SIZE} rows per pass, eval_accumulation_steps None -> "
                f"{cfg.GRAD_ACCUM}" in out) is said
        assert ("changed the eval-loss batch" in out) is said  # an untouched eval batch says nothing
        assert ("answer generation still uses EVAL_BATCH_SIZE=8" in out) is said
