"""Publish a run: a model card rendered from its real results, an upload folder, and a Hub push that cannot lose
the adapter (it is always saved locally first; a failed push keeps everything and prints how to retry)."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from medreason.answers.prompts import PROMPT_STYLES
from medreason.config.errors import UserError
from medreason.evaluate.report import STAGES, benchmark_table, metrics_table, stage_of, win_sentence
from medreason.model.embedded import EMBEDDED, EMBEDDED_HUB_ID
from medreason.model import run_record
from medreason.model.gguf import MODELFILE

TEMPLATE = Path(__file__).resolve().parents[2] / "model_card.md"
PROJECT_NAME = "medical-reasoning fine-tuning"
UPLOAD_DIR = "hub_upload"


@dataclass(frozen=True)
class PushPlan:
    mode: str  # "off", "dry-run" or "push"
    repo_id: str
    private: bool


def check_push(push_to_hub, repo_id: str, private: bool, run_name: str) -> PushPlan:
    """Preflight, before any model loads: a push needs a token that may write to a well-formed repo id."""
    if push_to_hub in (False, "off", "none", ""):
        return PushPlan("off", repo_id, private)
    if push_to_hub not in (True, "dry-run"):
        raise UserError(f"PUSH_TO_HUB={push_to_hub!r}: use False, True or 'dry-run'.")
    repo_id = repo_id or os.environ.get("HF_REPO_ID", "")
    if push_to_hub == "dry-run":
        return PushPlan("dry-run", repo_id or f"your-name/{run_name}", private)
    from huggingface_hub import get_token
    if not get_token():  # HF_TOKEN (environment or .env), then `hf auth login`'s saved token, then Colab's secret
        raise UserError("PUSH_TO_HUB=True needs a Hugging Face token with write access, and none was found. Fix: "
                        "`hf auth login`, or HF_TOKEN=hf_… in .env or the environment (in Colab: the HF_TOKEN "
                        "secret), or --PUSH_TO_HUB=dry-run to build the upload folder without pushing.")
    check_repo_id(repo_id)
    print(f"[preflight] push: {check_write_access(repo_id)}")
    return PushPlan("push", repo_id, private)


def check_write_access(repo_id: str) -> str:
    """Ask the Hub (whoami) whether the token may write to repo_id's namespace; a sentence saying what was found.
    Refuses an invalid or read-only token and a namespace that is neither the user's nor one of their orgs'."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError
    if constants.HF_HUB_OFFLINE:
        return "offline (HF_HUB_OFFLINE=1): write access not checked; the push at the end needs a connection"
    try:
        me = HfApi().whoami()
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code == 401:
            raise UserError(f"the Hugging Face Hub refused the token ({str(e).splitlines()[0]}). Fix: create a "
                            f"write token at https://huggingface.co/settings/tokens and `hf auth login --force`, "
                            f"or set HF_TOKEN.") from None
        return f"could not check the token ({type(e).__name__}); the push is tried at the end"
    except Exception as e:  # no connection: the run may still be worth doing; the push keeps everything on failure
        return f"could not reach the Hub to check the token ({type(e).__name__}); the push is tried at the end"
    user = me.get("name", "?")
    role = (me.get("auth", {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise UserError(f"the Hugging Face token of {user!r} is read-only, so the push at the end would fail. Fix: "
                        f"create a token with write access at https://huggingface.co/settings/tokens, then "
                        f"`hf auth login --force` (or HF_TOKEN in .env).")
    namespaces = [user] + [org.get("name") for org in me.get("orgs", [])]
    namespace, name = repo_id.split("/")
    if namespace not in namespaces:
        raise UserError(f"HF_REPO_ID={repo_id!r}: the token belongs to {user!r}, who can push to "
                        f"{', '.join(namespaces)} but not to {namespace!r}. Fix: --HF_REPO_ID={user}/{name}.")
    return f"the token of {user!r} ({role or 'unknown'} access) may push to {repo_id}"


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        if repo_id.count("/") != 1:
            raise HFValidationError("it must be namespace/name")
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"HF_REPO_ID={repo_id!r} is not a valid Hub repo id ({e}). Fix: --HF_REPO_ID=your-name/"
                        f"medical-llama-3.2-3b-lora (letters, digits, '-', '_', '.'; set it in .env or the "
                        f"script).") from None


def license_for(base_model: str) -> str:
    """The adapter inherits the base model's license."""
    name = base_model.lower()
    if "llama-3.2" in name:
        return "llama3.2"
    if "llama-3.1" in name:
        return "llama3.1"
    if "smollm" in name or "qwen" in name or "mistral" in name:
        return "apache-2.0"
    return "other"


def _run_facts(run_dir: Path) -> tuple[dict, dict, dict]:
    """results.json, training_info.json and adapter_config.json of a finished run, each checked readable."""
    results_path, adapter = run_dir / "results.json", run_dir / "adapter"
    if not results_path.is_file():
        raise UserError(f"{results_path} not found: publish a folder written by medical_fine_tuning.py, "
                        f"preference_tuning.py or rl_tuning.py (its OUTPUT_DIR).")
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: no adapter_config.json, so there is no adapter to publish. Fix: run the same "
                        f"training command again (it resumes from the checkpoints and saves the adapter).")
    results = _read_run_json(results_path, ("settings", "metrics"))
    info = run_record.read(adapter)
    return results, info, _read_run_json(adapter / "adapter_config.json", ("base_model_name_or_path",))


def _read_run_json(path: Path, needed: tuple[str, ...]) -> dict:
    """A JSON object the run wrote, with the keys the card needs; a damaged file (a run killed while writing it)
    is a one-line error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: damaged, not readable JSON ({type(e).__name__}: {str(e)[:120]}), e.g. the run was "
                        f"stopped while writing it. Fix: run the same training command again to write it anew.") \
            from None
    missing = [key for key in needed if not isinstance(data, dict) or key not in data]
    if missing:
        raise UserError(f"{path}: has no {', '.join(repr(k) for k in missing)}, so it was not written by this "
                        f"version's medical_fine_tuning.py. Fix: run the training command again to write it anew.")
    return data


METRIC_NOTES = {  # the card's sentence on each metric of the evaluation table, and its model-index name
    "rouge_l": ("rougeL", "ROUGE-L F of the answer part", "ROUGE-L is of the answer part (the reasoning left out) "
                "against the reference answer"),
    "format_compliance": ("format_compliance", "answers complete in the trained layout", "format compliance is the "
                          "share of answers complete in the layout described above"),
    "perplexity": ("perplexity", "reference-answer perplexity", "perplexity is of the reference answers (lower is "
                   "better)"),
    "accuracy": ("accuracy", "accuracy, one extracted option", "accuracy counts an answer with no single extractable "
                 "option as wrong"),
    "extraction_rate": ("extraction_rate", "answers with one extractable option", "extraction rate is the share of "
                        "answers naming one option"),
}
COMPARED_WITH = {"base": ("base model", "base model (adapter disabled)"),
                 "sft": ("SFT adapter", "the SFT adapter this stage started from")}


def _evaluation_table(evaluation: dict | None, stage) -> tuple[str, str]:
    """The card's evaluation: the stage's own model against the one it started from, from results.json's table."""
    if not evaluation or stage.after not in evaluation:
        return "No evaluation was run for this adapter.", ""
    after = evaluation[stage.after]
    header, described = COMPARED_WITH.get(stage.before, (stage.before, stage.before))
    table = metrics_table(evaluation, (header, "this adapter"), list(after))
    n = next(iter(after.values()))["n"]
    notes = "; ".join(METRIC_NOTES[name][2] for name in after if name in METRIC_NOTES)
    intro = (f"Measured after training on {n} held-out questions, {described} against this adapter, same prompts, "
             f"greedy decoding. Each cell is the value and its 95% bootstrap interval. {notes[0].upper() + notes[1:]}."
             if notes else "")
    win = evaluation.get("judge_win_rate")
    if win:
        intro += " " + win_sentence(win)
    return intro, table


def answer_layout(info: dict, settings: dict):
    """The answer style the adapter was trained with (answers/prompts.py): the card describes its layout."""
    name = info.get("prompt_style") or settings.get("PROMPT_STYLE") or "think_response"
    return PROMPT_STYLES.get(name, PROMPT_STYLES["think_response"])


def training_story(results: dict, info: dict, base: str, backend: str) -> tuple[str, str, str]:
    """(the card's sentence on how the adapter was trained, the Training heading, its numbered stages)."""
    stage, records = stage_of(results), info.get("stages") or results.get("stages") or []
    if stage.name == "sft" or not records:
        dataset = results["settings"].get("DATASET", "")
        hub_dataset = _hub_dataset(dataset)
        described = (f"[{hub_dataset}](https://huggingface.co/datasets/{hub_dataset})" if hub_dataset
                     else f"the local file `{Path(dataset).name}`")
        return (f"It was trained with the {PROJECT_NAME} project's `{stage.script}` ({backend} backend, trl "
                f"`{stage.trainer}`) on {described}.", "Training", "")
    words = {2: "two", 3: "three", 4: "four"}
    count = words.get(len(records), str(len(records)))
    names = " -> ".join(r["stage"].upper() for r in records)
    described = {name: s.describe for name, s in STAGES.items() if s.describe}
    lines = [f"{n}. " + (described[r["stage"]](r, results, info, base) if r["stage"] in described
                         else f"**{r['stage'].upper()}**") for n, r in enumerate(records, start=1)]
    return (f"It was trained with the {PROJECT_NAME} project in {count} stages ({names}, {backend} backend), the "
            f"last with `{stage.script}` (trl `{stage.trainer}`); each is described under Training below.",
            f"Training: {count} stages", "\n".join(lines))


def _hub_dataset(dataset: str) -> str | None:
    return dataset if dataset and dataset.count("/") == 1 and not Path(dataset).exists() else None


def data_summary(results: dict) -> str:
    """The card's line on the rows the last stage trained and was measured on."""
    data, pairs, questions = results.get("data") or {}, results.get("pairs"), results.get("questions")
    if pairs:
        return (f"{pairs.get('pairs', '?')} preference pairs" + (f" ({pairs.get('tie', 0)} ties and "
                f"{pairs.get('near_tie', 0)} near-ties dropped)" if "tie" in pairs else "") + ".")
    if questions:
        return (f"{questions.get('train', '?')} training questions, {questions.get('held_out', '?')} held out; "
                f"{questions.get('refused', 0)} refused as sharing text with a held-out or benchmark question.")
    return (f"{data.get('train_rows', '?')} training rows, {data.get('val_rows', '?')} held out for validation; rows "
            f"dropped in validation: {data.get('dropped') or 'none'}.")


# --- exam benchmarks: one model-index entry per benchmark (the Hub shows them), and the table in the card ---------

def read_benchmarks(run_dir: Path) -> dict | None:
    """The run's exam-benchmark results (<run>/benchmarks/results.json, from BENCHMARKS or evaluate.py), if any."""
    path = run_dir / "benchmarks" / "results.json"
    return _read_run_json(path, ("benchmarks", "protocol")) if path.is_file() else None


def benchmark_eval_results(benchmarks: dict | None) -> list:
    """The tuned model's accuracy (%) on each benchmark as a model-index entry, named with its protocol and n."""
    from huggingface_hub import EvalResult
    if not benchmarks:
        return []
    entries = []
    for name, row in benchmarks["benchmarks"].items():
        hub = row.get("dataset_id", "") if str(row.get("dataset_id", "")).count("/") == 1 else None
        tuned = row.get("tuned", {}).get("accuracy")
        if tuned is None:
            continue
        entries.append(EvalResult(
            task_type="multiple-choice", task_name=f"{name} ({benchmarks['protocol']} protocol)",
            dataset_type=hub or name, dataset_name=name, dataset_config=row.get("subset") or None,
            dataset_split=row.get("split") or None, metric_type="accuracy",
            metric_name=f"accuracy, {benchmarks['protocol']} protocol, n={row['n']}",
            metric_value=round(100 * tuned["value"], 2), verified=False))
    return entries


def benchmark_section(benchmarks: dict | None) -> str:
    if not benchmarks:
        return ""
    return (f"\n\n### Exam benchmarks\n\nProtocol **{benchmarks['protocol']}**: {benchmarks['protocol_detail']}. "
            f"Accuracy in %, with 95% bootstrap intervals; base = the adapter disabled.\n\n"
            + benchmark_table(benchmarks))


def render_card(run_dir: Path, repo_id: str, adapter_ref: str | None = None):
    """The model card of a finished run of any stage (SFT, DPO, RL...), from its results.json, training_info.json
    and adapter_config.json: the stage's own evaluation, its training, the answer layout it was trained to."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    results, info, adapter_config = _run_facts(run_dir)
    settings, stage = results["settings"], stage_of(results)
    base = EMBEDDED_HUB_ID if info.get("model_name") == EMBEDDED else adapter_config["base_model_name_or_path"]
    dataset = settings.get("DATASET") or ""
    hub_dataset = _hub_dataset(dataset)
    evaluation = results.get("evaluation") or {}
    eval_results = [EvalResult(task_type="text-generation", dataset_type=hub_dataset or "local",
                               dataset_name=hub_dataset or Path(dataset).name or "held-out questions",
                               dataset_split="held-out validation", metric_type=METRIC_NOTES[name][0],
                               metric_name=METRIC_NOTES[name][1], metric_value=round(metric["value"], 4))
                    for name, metric in evaluation.get(stage.after, {}).items() if name in METRIC_NOTES]
    benchmarks = read_benchmarks(run_dir)
    eval_results += benchmark_eval_results(benchmarks)
    backend = info.get("backend", results.get("plan", {}).get("backend", "transformers"))
    style = answer_layout(info, settings)
    stage_tags = [r["stage"] for r in info.get("stages") or []] + list(stage.tags)
    card_data = ModelCardData(
        base_model=base, library_name="peft", license=license_for(base), language=["en"],
        datasets=[hub_dataset] if hub_dataset else None, pipeline_tag="text-generation",
        tags=list(dict.fromkeys(["medical", *(["chain-of-thought"] if style.reasoning else []), "reasoning", "lora",
                                 "sft", *stage_tags, "trl", backend])),
        model_name=repo_id.split("/")[-1], eval_results=eval_results or None)
    intro, table = _evaluation_table(evaluation, stage)
    table += benchmark_section(benchmarks)
    trained_how, training_heading, training_stages = training_story(results, info, base, backend)
    adapter_file = run_dir / "adapter" / "adapter_model.safetensors"
    data = results.get("data") or {}
    extra = ("- Trained as a demo on a small illustrative dataset with a 135M-parameter model: it shows the pipeline "
             "working, not a useful medical model." if info.get("model_name") == EMBEDDED else "")
    if data.get("shortened_reasoning"):
        extra += ("\n" if extra else "") + (
            f"- Trained on chains of thought shortened to about {settings['MAX_THINK_WORDS']} words (their opening "
            f"and concluding paragraphs; {data['shortened_reasoning']} rows): expect short reasoning, "
            f"not the full length of the dataset's.")
    after = evaluation.get(stage.after) or {}
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_name=repo_id.split("/")[-1], repo_id=adapter_ref or repo_id,
        base_model=base, answer_layout=style.card_text, trained_how=trained_how, training_heading=training_heading,
        training_stages=training_stages,
        adapter_size=f"{adapter_file.stat().st_size / 1e6:.1f} MB" if adapter_file.is_file() else "a few MB",
        evaluation_intro=intro, evaluation_table=table,
        settings_table="\n".join(f"| `{k}` | `{settings[k]}` |" for k in stage.card_settings if k in settings),
        data_summary=data_summary(results), system_prompt=info.get("system_prompt", ""),
        versions=", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items()),
        max_new_tokens=settings.get("MAX_NEW_TOKENS", 1024),
        eval_n=results["metrics"].get("eval_samples") or (next(iter(after.values()))["n"] if after else "?"),
        extra_limitations=extra + safety_note(results, stage))


def write_card(run_dir: Path) -> Path:
    """OUTPUT_DIR/model_card.md at the end of a run: the card publish.py would upload, pointing at the local
    adapter."""
    path = run_dir / "model_card.md"
    render_card(run_dir, run_dir.name, adapter_ref=str(run_dir / "adapter")).save(path)
    return path


def build_upload_folder(run_dir: Path, repo_id: str) -> Path:
    """Exactly what would be uploaded: the adapter's files and the card as README.md."""
    card = render_card(run_dir, repo_id)
    folder = run_dir / UPLOAD_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in (run_dir / "adapter").iterdir():
        if path.is_file() and path.name != "README.md":  # peft's placeholder card is replaced by ours
            shutil.copy2(path, folder / path.name)
    card.text += add_gguf_files(run_dir, folder, repo_id)
    card.save(folder / "README.md")
    return folder


GGUF_DIR = "gguf"  # OUTPUT_DIR/gguf (SAVE_GGUF, medreason/model/gguf.py): uploaded beside the adapter when present


def add_gguf_files(run_dir: Path, folder: Path, repo_id: str) -> str:
    """The run's GGUF export (its .gguf files, Modelfile, training_info.json) linked into the upload folder, and the
    card's section listing them with their sizes and the Ollama command; "" when the run made none."""
    source = run_dir / GGUF_DIR
    files = sorted(source.glob("*.gguf")) + [source / n for n in (MODELFILE, run_record.FILE_NAME)] \
        if source.is_dir() else []
    files = [p for p in files if p.is_file()]
    if not any(p.suffix == ".gguf" for p in files):
        return ""
    (folder / GGUF_DIR).mkdir()
    for path in files:
        try:
            os.link(path, folder / GGUF_DIR / path.name)  # no second copy of a multi-GB file
        except OSError:
            shutil.copy2(path, folder / GGUF_DIR / path.name)
    name = repo_id.split("/")[-1].lower()
    rows = "\n".join(f"| `{GGUF_DIR}/{p.name}` | {p.stat().st_size / 1e6:,.1f} MB |" for p in files)
    first = next(p.name for p in files if p.suffix == ".gguf")
    return (f"\n\n## GGUF for llama.cpp and Ollama\n\nThe adapter merged into the base model, converted and "
            f"quantized with llama.cpp's own tools. The `{MODELFILE}` holds the model's chat template, the trained "
            f"system prompt, the stop tokens and greedy decoding.\n\n| File | Size |\n|---|---|\n{rows}\n\n"
            f"```bash\nhf download {repo_id} --include '{GGUF_DIR}/*' --local-dir {name}\n"
            f"cd {name}/{GGUF_DIR} && ollama create {name} -f {MODELFILE} && ollama run {name}\n"
            f"# or: python inference.py --gguf {name}/{GGUF_DIR}/{first} (this project, llama-cpp-python)\n```\n")


def describe_folder(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return "\n".join(f"  {p.stat().st_size / 1e6:9.2f} MB  {p.name}" for p in files)


def push(folder: Path, plan: PushPlan) -> str:
    """Create the repo if needed and upload the folder; returns the repo URL."""
    from huggingface_hub import HfApi
    api = HfApi()  # the token from huggingface_hub's own lookup (HF_TOKEN, `hf auth login`, Colab secret)
    url = api.create_repo(plan.repo_id, private=plan.private, exist_ok=True)
    api.upload_folder(repo_id=plan.repo_id, folder_path=str(folder), commit_message="Upload medical reasoning adapter")
    return str(url)


def retry_command(run_dir: Path, plan: PushPlan) -> str:
    return f"python publish.py --output-dir {run_dir} --repo-id {plan.repo_id}" + ("" if plan.private else " --public")


def publish(run_dir: Path, plan: PushPlan) -> bool:
    """Build the upload folder, then push it unless this is a dry run. False if the push failed."""
    if plan.mode == "off":
        return True
    folder = build_upload_folder(run_dir, plan.repo_id)
    print(f"[publish] upload folder for {plan.repo_id} ({'private' if plan.private else 'public'}): {folder}")
    print(describe_folder(folder))
    if plan.mode == "dry-run":
        print("[publish] dry run: nothing uploaded. Push it with: " + retry_command(run_dir, plan))
        return True
    try:
        print(f"[publish] pushed: {push(folder, plan)}")
        return True
    except Exception as e:  # network, auth, quota: whatever it is, nothing local is touched
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(f"[publish] the push to {plan.repo_id} FAILED ({reason}). Everything is kept in {run_dir}. "
              f"Retry the push alone with:\n  {retry_command(run_dir, plan)}")
        return False


# --- safety (medreason/evaluate/safety.py) in the card ------------------------------------------------------------------------

def safety_note(results: dict, stage) -> str:
    """Card lines on the safety training (SAFETY_MIX) and the measured refusal rates, this adapter against the model
    it started from."""
    data, tuned = results.get("data") or {}, (results.get("evaluation") or {}).get(stage.after, {})
    base = (results.get("evaluation") or {}).get(stage.before, {})
    lines = []
    if data.get("safety_rows"):
        lines.append(f"- Trained with SAFETY_MIX={data['safety_mix']}: {data['safety_rows']} of the training rows were "
                     f"the project's illustrative safety examples ({data['safety_unsafe_rows']} unsafe asks declined, "
                     f"{data['safety_control_rows']} look-alike questions answered).")
    for name, what in (("safety_refusal", "unsafe asks refused"), ("safety_over_refusal", "safe controls refused")):
        if name in tuned:
            m, b = tuned[name], base.get(name)
            lines.append(f"- Safety, {what}: {m['value']:.0%} [{m['ci95'][0]:.0%}, {m['ci95'][1]:.0%}] of {m['n']}"
                         + (f" ({COMPARED_WITH.get(stage.before, (stage.before,))[0]} {b['value']:.0%} "
                            f"[{b['ci95'][0]:.0%}, {b['ci95'][1]:.0%}])" if b else "")
                         + "; refusals judged by rules, on the project's held-out safety set (illustrative, not a "
                           "clinical safety assessment).")
    return ("\n" + "\n".join(lines)) if lines else ""
