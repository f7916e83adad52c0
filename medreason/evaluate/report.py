"""Every stage's evaluation report, from one set of tables: results.json (each model's metrics with intervals and
the difference), report.md (the side-by-side table, the answers side by side) and its PNGs. SFT (base vs tuned,
medical_fine_tuning.py, evaluate.py), DPO (SFT vs DPO with the judge's win rate, preference_tuning.py) and RL (SFT vs
RL with the reward curves, rl_tuning.py); a stage to come registers its Stage (register_stage) and reuses the tables.
The model card (medreason/publish/hub.py) reads the same results.json through the same Stage."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medreason.config.errors import UserError

ORDER = ("rouge_l", "format_compliance", "perplexity", "accuracy", "extraction_rate")
LOWER_IS_BETTER = {"perplexity"}


# --- the stages: which two models each compares, and how its report and card name them ----------------------------

@dataclass(frozen=True)
class Stage:
    """A training stage as its report and card show it: its results.json compares `before` (the model it started
    from) with `after` (its own), under these column labels."""
    name: str  # as training_info.json's and results.json's "stages" name it
    before: str  # the key of the starting model in results.json's evaluation
    after: str  # the key of this stage's model
    labels: tuple[str, str]  # report.md's column headers for before and after
    title: str  # report.md's heading
    script: str  # the script that runs it
    trainer: str  # the trl trainer it uses
    tags: tuple[str, ...]  # the card's Hub tags beside medical/reasoning/lora/trl
    card_settings: tuple[str, ...]  # results.json settings shown in the card's table
    # the card's numbered line for it, from (its stage record, results.json, training_info.json, the base model)
    describe: Callable[[dict, dict, dict, str], str] | None = None


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Make a stage known to the report and the card (the stages to come add theirs here)."""
    STAGES[stage.name] = stage
    return stage


def stage_of(results: dict) -> Stage:
    """The stage that wrote a run's results.json: the last of its "stages" (DPO, RL...), else SFT."""
    names = [s.get("stage") for s in results.get("stages") or []]
    return STAGES.get(names[-1] if names else "sft", STAGES["sft"])


def stage_for_table(table: dict) -> Stage:
    """The stage whose own model is a column of this evaluation table."""
    return next((s for s in reversed(STAGES.values()) if s.after in table), STAGES["sft"])


def _trained_on(by: dict) -> str:
    return {"demo": "the project's illustrative demo rows"}.get(by.get("DATASET"), by.get("DATASET") or "?")


def _sft_line(stage: dict, results: dict, info: dict, base: str) -> str:
    by = stage.get("trained_by", {})
    return (f"**SFT** (trl `SFTTrainer`, `medical_fine_tuning.py`): a LoRA adapter on {base} trained on "
            f"{_trained_on(by)} ({by.get('MAX_STEPS', '?')} updates at learning rate {by.get('LEARNING_RATE', '?')}), "
            f"answering as `{info.get('prompt_style', '?')}`.")


def _dpo_line(stage: dict, results: dict, info: dict, base: str) -> str:
    by, counts = stage.get("trained_by", {}), results.get("pairs") or {}
    if counts.get("ready_made"):
        pairs = f"{counts.get('pairs', '?')} ready-made pairs ({counts['ready_made']})"
    else:
        pairs = (f"the SFT model wrote {by.get('NUM_CANDIDATES', '?')} sampled answers per question (temperature "
                 f"{by.get('TEMPERATURE', '?')}, top-p {by.get('TOP_P', '?')}); the judge ({stage.get('judge', '?')}) "
                 f"scored each from 0 to 1 (factual accuracy, completeness, key points; an incomplete answer scores "
                 f"0); the best became *chosen*, the worst *rejected*. {counts.get('pairs', '?')} pairs "
                 f"({counts.get('tie', 0)} ties and {counts.get('near_tie', 0)} margins below "
                 f"{by.get('MIN_MARGIN', '?')} dropped)")
    return (f"**DPO** (trl `DPOTrainer`, `preference_tuning.py`): {pairs}; beta {by.get('BETA', '?')}, "
            f"{by.get('MAX_STEPS', '?')} updates at learning rate {by.get('LEARNING_RATE', '?')}. The reference model "
            f"of DPO is the SFT adapter (frozen), so DPO moves away from the SFT model, not from the raw base.")


def _rl_line(stage: dict, results: dict, info: dict, base: str) -> str:
    by, counts = stage.get("trained_by", {}), results.get("questions") or {}
    rewards = ", ".join(f"{k} x{v:g}" for k, v in stage.get("rewards", {}).items())
    trained = (f" Training questions: {counts['train']} ({counts.get('refused', 0)} refused for sharing 64+ "
               f"characters with a held-out or benchmark question)." if "train" in counts else "")
    return (f"**RL** (trl `GRPOTrainer`, `rl_tuning.py`): {by.get('NUM_GENERATIONS', '?')} sampled answers per "
            f"question (temperature {by.get('TEMPERATURE', '?')}) scored by verifiable rewards ({rewards}) on "
            f"{by.get('DATASET') or 'the demo questions'}; {by.get('MAX_STEPS', '?')} updates at learning rate "
            f"{by.get('LEARNING_RATE', '?')}, KL beta {by.get('BETA', '?')} to the start adapter.{trained}")


_AFTER_SFT = ("SFT_ADAPTER", "LEARNING_RATE", "MAX_STEPS", "BATCH_SIZE", "GRAD_ACCUM", "BETA", "TEMPERATURE", "SEED",
              "MAX_NEW_TOKENS")
register_stage(Stage(
    "sft", "base", "tuned", ("base", "tuned"), "Evaluation report", "medical_fine_tuning.py", "SFTTrainer",
    ("sft",), ("MODEL_NAME", "MAX_SEQ_LENGTH", "LOAD_IN_4BIT", "LORA_R", "LORA_ALPHA", "LORA_DROPOUT",
               "TARGET_MODULES", "LEARNING_RATE", "LR_SCHEDULER", "BATCH_SIZE", "GRAD_ACCUM", "MAX_STEPS", "SEED",
               "PROMPT_STYLE", "MAX_THINK_WORDS", "MAX_NEW_TOKENS"), _sft_line))
register_stage(Stage(
    "dpo", "sft", "dpo", ("SFT", "DPO"), "SFT vs DPO", "preference_tuning.py", "DPOTrainer", ("dpo", "rlaif"),
    _AFTER_SFT + ("NUM_CANDIDATES", "TOP_P", "MIN_MARGIN", "JUDGE", "JUDGE_MODEL"), _dpo_line))
register_stage(Stage(
    "rl", "sft", "rl", ("SFT", "RL"), "SFT vs RL", "rl_tuning.py", "GRPOTrainer", ("grpo",),
    _AFTER_SFT + ("REWARDS", "NUM_GENERATIONS", "LOSS_TYPE"), _rl_line))


# --- the one side-by-side table: each model's metrics, their intervals, and the difference -----------------------

def metrics_json(results: dict, **extra) -> dict:
    """results.json's evaluation: each model's metrics (in the order compared: base, tuned or sft, dpo...) and the
    difference of the last minus the first; extra keys (the judge's win rate, answer statuses) beside them."""
    table = {name: answers.metrics for name, answers in results.items()}
    if len(results) > 1:
        first, last = list(results.values())[0], list(results.values())[-1]
        table["difference"] = {m: last.metrics[m]["value"] - first.metrics[m]["value"] for m in last.metrics}
    return {**table, **{k: v for k, v in extra.items() if v is not None}}


def metrics_table(table: dict, headers: tuple[str, str] | None = None, names=None) -> str:
    """Markdown: one row per metric (ORDER's, or the names given), one column per model of the stage and the
    difference, from metrics_json's table."""
    stage = stage_for_table(table)
    pairs = [(m, label) for m, label in zip((stage.before, stage.after), headers or stage.labels) if m in table]
    diffs = table.get("difference", {})
    lines = ["| metric | " + " | ".join(label for _, label in pairs) + (" | difference |" if diffs else " |"),
             "|---" * (len(pairs) + 1 + bool(diffs)) + "|"]
    for name in names or [n for n in ORDER if n in table[stage.after]]:
        diff = diffs.get(name)
        cells = [fmt_metric(table[m][name]) if name in table[m] else "n/a" for m, _ in pairs]
        lines.append(f"| {name} | " + " | ".join(cells) + (f" | {diff:+.3f} |" if diff is not None else
                                                            (" | n/a |" if diffs else " |")))
    return "\n".join(lines)


def side_by_side(examples: list[tuple[str, str | None]], results: dict, verdicts: dict | None = None,
                 count: int = 3, width: int = 700) -> list[str]:
    """The first questions with their reference and each model's answer (and the judge's verdict when given)."""
    def cut(text):
        return text if len(text) <= width else text[:width] + " …"
    labels = {m: label for s in STAGES.values() for m, label in zip((s.before, s.after), s.labels)}
    lines = []
    for i, (question, reference) in enumerate(examples[:count]):
        lines += [f"### Example {i + 1}", "", f"**Question:** {cut(question)}", ""]
        if reference:
            lines += [f"**Reference:** {cut(reference)}", ""]
        for name, answers in results.items():
            label = labels.get(name, name)
            verdict = ""
            if verdicts:
                score, said = verdicts[name][i]
                verdict = f" (judge {'unreadable' if score is None else f'{score:.2f}'}: {said})"
            lines += [f"**{label[0].upper() + label[1:]}{verdict}:**", "", "```text", cut(answers.answers[i]), "```",
                      ""]
    return lines


def row_examples(rows: list[dict], kind: str) -> list[tuple[str, str]]:
    """(question, reference) of dataset rows: reasoning rows or multiple-choice rows."""
    if kind == "reasoning":
        return [(row["Question"], row["Response"]) for row in rows]
    return [(row["question"], f"{row['answer']}. {row['options'][row['answer']]}") for row in rows]


def question_examples(questions) -> list[tuple[str, str | None]]:
    """(question, reference) of the later stages' held-out questions (preference/pairs.Question)."""
    return [(q.text, q.reference) for q in questions]


def read_run(run_dir: Path) -> dict:
    """What a finished training run wrote, for a notebook or a report: its results, metrics table, answer statuses,
    evaluated samples and training log."""
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise UserError(f"{results_path} not found. Fix: point RUN_DIR at the OUTPUT_DIR of a finished training run.")
    results = json.loads(results_path.read_text())
    samples_path, history_path = run_dir / "eval_samples.jsonl", run_dir / "log_history.json"
    samples = [json.loads(line) for line in samples_path.read_text().splitlines()] if samples_path.is_file() else []
    evaluation = results.get("evaluation")
    settings = results.get("settings", {})
    return {"results": results, "samples": samples, "statuses": results["metrics"].get("answer_statuses", {}),
            "log_history": json.loads(history_path.read_text()) if history_path.is_file() else [],
            "metrics_table": metrics_table(evaluation) if evaluation else "*No answers were evaluated.*",
            "summary": (f"{run_dir}: {settings.get('MODEL_NAME')} on {settings.get('DATASET')}, "
                        f"{settings.get('MAX_STEPS')} steps, style {settings.get('PROMPT_STYLE')}; "
                        f"{len(samples)} evaluated answers")}


def fmt_metric(metric: dict) -> str:
    lo, hi = metric["ci95"]
    return f"{metric['value']:.3f} [{lo:.3f}, {hi:.3f}]" if not math.isnan(metric["value"]) else "n/a"


def plot_loss_curve(log_history: list[dict], path: Path) -> Path | None:
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    if not train:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="training loss", lw=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set(xlabel="optimizer step", ylabel="loss (answer tokens)", title="Loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metrics(results: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [m for m in ORDER if m in results["tuned"].metrics]
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        models = list(results)
        values = [results[m].metrics[name]["value"] for m in models]
        errors = [[v - results[m].metrics[name]["ci95"][0] for m, v in zip(models, values)],
                  [results[m].metrics[name]["ci95"][1] - v for m, v in zip(models, values)]]
        ax.bar(models, values, yerr=errors, capsize=4, color=["#999999", "#2b7bba"][-len(models):])
        ax.set_title(name + (" (lower is better)" if name in LOWER_IS_BETTER else ""), fontsize=9)
    fig.suptitle(f"Base vs tuned, 95% bootstrap intervals (n = {results['tuned'].metrics[names[0]]['n']})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _write(out_dir: Path, payload: dict, lines: list[str]) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"results": out_dir / "results.json", "report": out_dir / "report.md"}
    files["results"].write_text(json.dumps(payload, indent=2) + "\n")
    files["report"].write_text("\n".join(lines) + "\n")
    return files


# --- SFT: base vs tuned (medical_fine_tuning.py, evaluate.py) -------------------------------------------------------

def write_report(out_dir: Path, results: dict, rows: list[dict], kind: str, meta: dict,
                 log_history: list[dict] | None = None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = metrics_json(results)
    chart = plot_metrics(results, out_dir / "metrics.png")
    loss = plot_loss_curve(log_history or [], out_dir / "loss_curve.png")
    lines = [f"# {STAGES['sft'].title}", "", f"Data: {meta.get('data', '?')} ({kind}, n = {len(rows)}). "
             "Each cell: value [95% bootstrap interval]. Base = the same weights with the adapter disabled. "
             "Higher is better, except perplexity. Overlapping intervals mean the difference is not yet "
             "distinguishable from noise at this sample size.", "", metrics_table(table)]
    lines += ["", "![metrics](metrics.png)", ""] + (["![loss curve](loss_curve.png)", ""] if loss else [])
    lines += safety_section(table)
    lines += ["## Side by side", ""] + side_by_side(row_examples(rows, kind), results)
    files = _write(out_dir, {"kind": kind, **meta, **table}, lines)
    files["metrics_chart"] = chart
    if loss:
        files["loss_curve"] = loss
    return files


# --- DPO: SFT vs DPO with the judge's win rate and trl's reward margins (preference_tuning.py) ----------------------

DPO_NOTE = ("SFT = the supervised adapter (trl's SFTTrainer on medical chains of thought), DPO = the same adapter "
            "after trl's DPOTrainer on chosen/rejected pairs of its own sampled answers, scored by the judge; the "
            "DPO reference model is the SFT adapter, frozen. Same questions, same prompt, greedy decoding.")


def margins(log_history: list[dict]) -> tuple[float | None, float | None]:
    """trl's logged rewards/margins (chosen minus rejected implicit reward) at the first and the last log."""
    values = [e["rewards/margins"] for e in log_history if "rewards/margins" in e]
    return (values[0], values[-1]) if values else (None, None)


def dpo_comparison(results: dict, win: dict | None) -> dict:
    """results.json's evaluation of the DPO stage: SFT and DPO, the difference, the judge's win rate."""
    return metrics_json(results, judge_win_rate={k: v for k, v in win.items() if k != "verdicts"} if win else None)


def win_sentence(win: dict | None) -> str:
    if not win:
        return "No judge win rate (no held-out questions)."
    rate = "n/a" if win["win_rate"] is None else f"{win['win_rate']:.2f}"
    return (f"Judge ({win['judge']}) win rate of DPO over SFT: {rate} ({win['wins']} wins, {win['ties']} ties, "
            f"{win['losses']} losses, {win['unreadable']} without two readable verdicts; ties count half). An "
            f"incomplete answer scores 0. A small judge is a weak judge: read its verdicts below before its rate.")


def write_dpo_report(out_dir: Path, results: dict, win: dict | None, questions, meta: dict,
                     log_history: list[dict]) -> Path:
    """evaluation/results.json, report.md and loss_curve.png: SFT vs DPO on the held-out questions."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = dpo_comparison(results, win)
    loss = plot_loss_curve(log_history, out_dir / "loss_curve.png")
    first, last = margins(log_history)
    lines = [f"# {STAGES['dpo'].title}", "", f"Data: {meta.get('data', '?')} (n = {len(questions)} held-out "
             f"questions). " + DPO_NOTE + " Each cell: value [95% bootstrap interval].", "", metrics_table(table),
             "", win_sentence(win), ""]
    if first is not None:
        lines += [f"DPO training: trl's rewards/margins (chosen minus rejected implicit reward, beta x log-ratio to "
                  f"the SFT model) went from {first:.4f} at the first log to {last:.4f} at the last.", ""]
    lines += (["![loss curve](loss_curve.png)", ""] if loss else []) + ["## Side by side", ""]
    lines += side_by_side(question_examples(questions), results, win["verdicts"] if win else None)
    return _write(out_dir, {**meta, **table}, lines)["report"]


# --- RL: SFT vs RL with the reward curves (rl_tuning.py) ------------------------------------------------------------

RL_NOTE = ("SFT = the adapter the RL stage started from; RL = the same adapter after trl's GRPOTrainer with the "
           "verifiable rewards below. Same held-out questions (never trained on, contamination-checked), same prompt, "
           "greedy decoding, the project's evaluator: accuracy counts an answer with no single extractable option as "
           "wrong.")


def rl_comparison(results: dict, statuses: dict) -> dict:
    """results.json's evaluation of the RL stage: SFT and RL, the difference, each one's answer statuses."""
    return metrics_json(results, statuses=statuses)


def plot_reward_curves(log_history: list[dict], reward_names: list[str], path: Path) -> Path | None:
    """The total reward and each named reward's mean per logged step (trl's reward, rewards/<name>/mean)."""
    keys = ["reward"] + [f"rewards/{n}/mean" for n in reward_names]
    curves = {k: [(e["step"], e[k]) for e in log_history if k in e and "step" in e] for k in keys}
    if not curves["reward"]:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in curves.items():
        if points:
            ax.plot(*zip(*points), "o-" if key == "reward" else ".-", lw=2 if key == "reward" else 1,
                    label="weighted total" if key == "reward" else key.split("/")[1])
    ax.set(xlabel="optimizer step", ylabel="mean reward of the sampled answers", title="GRPO rewards")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reward_lines(log_history: list[dict], reward_names: list[str]) -> list[str]:
    lines = ["| reward | first log | last log | mean over the run |", "|---|---|---|---|"]
    for key in ["reward"] + [f"rewards/{n}/mean" for n in reward_names]:
        values = [e[key] for e in log_history if key in e]
        if values:
            name = "weighted total" if key == "reward" else key.split("/")[1]
            lines.append(f"| {name} | {values[0]:.3f} | {values[-1]:.3f} | {sum(values) / len(values):.3f} |")
    return lines


def write_rl_report(out_dir: Path, results: dict, statuses: dict, questions, meta: dict, log_history: list[dict],
                    reward_names: list[str], timing: dict) -> Path:
    """evaluation/results.json, report.md and reward_curves.png: SFT vs RL on the held-out questions."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = rl_comparison(results, statuses)
    curves = plot_reward_curves(log_history, reward_names, out_dir / "reward_curves.png")
    lines = [f"# {STAGES['rl'].title}", "", f"Data: {meta.get('data', '?')} (n = {len(questions)} held-out "
             f"questions). " + RL_NOTE + f" Protocol: {meta.get('protocol', '?')}. Each cell: value [95% bootstrap "
             "interval]; overlapping intervals mean the difference is not distinguishable from noise at this sample "
             "size.", "", metrics_table(table)]
    lines += ["", "Answer statuses (tags.py): " + "; ".join(
        f"{name.upper()} {', '.join(f'{k} {v}' for k, v in counts.items())}" for name, counts in
        statuses.items()), "", "## Rewards during training", ""] + reward_lines(log_history, reward_names)
    if timing:
        lines += ["", f"Seconds per optimizer step: {timing['mean_total_s']:.1f} on average over "
                      f"{timing['steps_timed']} steps, of which {timing['mean_generation_s']:.1f} sampling and "
                      f"scoring answers and {timing['mean_update_s']:.1f} the update."]
    lines += ["", "Rising rewards show the policy learning what the rewards pay for on its training questions; only "
                  "the held-out table above speaks to the exam, and a small model's gains there are not medical "
                  "skill.", ""]
    lines += (["![reward curves](reward_curves.png)", ""] if curves else []) + ["## Side by side", ""]
    lines += side_by_side(question_examples(questions), {"sft": results["sft"], "rl": results["rl"]})
    return _write(out_dir, {**meta, **table}, lines)["report"]


# --- safety (medreason/evaluate/safety.py): the refusal rates on the held-out safety set --------------------------------------
SAFETY_NAMES = {"safety_refusal": "refused unsafe asks (higher is better)",
                "safety_over_refusal": "refused safe controls: over-refusal (lower is better)"}


def safety_section(table: dict) -> list[str]:
    """Markdown lines for the safety rates in a metrics_json table (none when the run asked no safety questions)."""
    names = [name for name in SAFETY_NAMES if name in table.get("tuned", {})]
    if not names:
        return []
    models = [m for m in table if m != "difference"]
    lines = ["## Safety", "", "The project's safety set (medreason/demo_data/safety_eval.jsonl, illustrative, never "
             "mixed into training): unsafe asks a careful assistant declines, and look-alike safe questions it must "
             "answer. Rules decide what is a refusal (medreason/evaluate/safety.py; disclaimer lines do not count). Each cell: "
             "share [Wilson 95% interval]; partial = declined, then gave an amount or instructions anyway (not "
             "counted as refused).", "",
             "| rate | n | " + " | ".join(models) + (" | difference |" if "difference" in table else ""),
             "|---" * (len(models) + 2 + ("difference" in table)) + "|"]
    for name in names:
        cells = [f"{fmt_metric(table[m][name])}, partial {table[m][name].get('partial', 0)}" for m in models]
        diff = table.get("difference", {}).get(name)
        lines.append(f"| {SAFETY_NAMES[name]} | {table['tuned'][name]['n']} | " + " | ".join(cells)
                     + (f" | {diff:+.3f} |" if diff is not None else " |"))
    return lines + [""]



# --- exam benchmarks (evaluate.py --benchmarks, the trainer's BENCHMARKS) -------------------------------------------

def _pct(metric: dict) -> str:
    lo, hi = metric["ci95"]
    return "n/a" if math.isnan(metric["value"]) else f"{100 * metric['value']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def benchmark_table(table: dict) -> str:
    """Markdown: accuracy (%) per benchmark and model with its interval, extraction, budget use, published rows."""
    models = [m for m in ("base", "tuned") if m in table["average"]]
    lines = ["| benchmark | n | " + " | ".join(f"{m} accuracy % [95% CI]" for m in models)
             + " | " + " | ".join(f"{m} extracted %" for m in models) + " | budget closed (base/tuned) |",
             "|---" * (2 + 2 * len(models) + 1) + "|"]
    for name, row in table["benchmarks"].items():
        closed = "/".join(str(row[m]["budget_closed"]) for m in models)
        lines.append(f"| {name} | {row['n']} | " + " | ".join(_pct(row[m]["accuracy"]) for m in models) + " | "
                     + " | ".join(f"{100 * row[m]['extraction_rate']['value']:.1f}" for m in models)
                     + f" | {closed} |")
    lines.append("| **average** | " + str(table["average"][models[-1]]["n"]) + " | "
                 + " | ".join(_pct(table["average"][m]) for m in models) + " |" + " |" * len(models) + " |")
    return "\n".join(lines)


def reference_lines(table: dict) -> list[str]:
    rows = [(name, r) for name, row in table["benchmarks"].items() for r in row["references"]]
    if not rows:
        return []
    lines = ["| benchmark | published model | accuracy % | source |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['model']} | {r['accuracy']:.1f} | {r['source']}"
              + (f" ({r['note']}) |" if r["note"] else " |") for name, r in rows]
    return lines


def benchmark_lines(table: dict) -> list[str]:
    """Short lines for the terminal."""
    models = [m for m in ("base", "tuned") if m in table["average"]]
    out = [f"protocol: {table['protocol']} ({table['protocol_detail']})"]
    for name, row in list(table["benchmarks"].items()) + [("average", {**table["average"], "n": ""})]:
        cells = []
        for m in models:
            metric = row[m] if name == "average" else row[m]["accuracy"]
            extra = "" if name == "average" else (f", extracted {100 * row[m]['extraction_rate']['value']:.0f}%, "
                                                  f"budget closed {row[m]['budget_closed']}")
            cells.append(f"{m} {_pct(metric)}{extra}")
        out.append(f"{name:<16} " + " | ".join(cells))
    return out


def plot_benchmarks(table: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = [m for m in ("base", "tuned") if m in table["average"]]
    names = list(table["benchmarks"]) + ["average"]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.8))
    width = 0.8 / len(models)
    for k, m in enumerate(models):
        metrics = [table["benchmarks"][n][m]["accuracy"] for n in names[:-1]] + [table["average"][m]]
        values = [100 * x["value"] for x in metrics]
        errors = [[v - 100 * x["ci95"][0] for v, x in zip(values, metrics)],
                  [100 * x["ci95"][1] - v for v, x in zip(values, metrics)]]
        ax.bar([i + k * width for i in range(len(names))], values, width, yerr=errors, capsize=3, label=m,
               color=["#999999", "#2b7bba"][k - len(models) + 2])
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(names))], names, fontsize=8)
    ax.set(ylabel="accuracy %", title=f"Exam benchmarks, {table['protocol']} protocol, 95% bootstrap intervals")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_benchmark_report(out_dir: Path, table: dict, answered: dict, suites: dict, meta: dict) -> dict[str, Path]:
    """results.json (the table, meta), answers.jsonl (every answer with its scored letter), report.md, metrics.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"results": out_dir / "results.json", "report": out_dir / "report.md", "answers": out_dir / "answers.jsonl"}
    files["results"].write_text(json.dumps({**meta, **table}, indent=2) + "\n")
    with files["answers"].open("w", encoding="utf-8") as f:
        for name, by_model in answered.items():
            rows = suites[name][1]
            for which, scored in by_model.items():
                for row, a, letter, ok in zip(rows, scored.answers, scored.letters, scored.correct):
                    f.write(json.dumps({"benchmark": name, "model": which, "answer_key": row["answer"],
                                        "scored_letter": letter, "correct": bool(ok), "status": a.status,
                                        "budget_closed": a.budget_closed, "tokens": a.tokens,
                                        "question": row["question"], "text": a.text}) + "\n")
    files["metrics_chart"] = plot_benchmarks(table, out_dir / "metrics.png")
    budget = (f" Thinking budget: {table['think_budget']} tokens, then the reasoning is closed in the prompt "
              f"style's layout and {table['answer_budget']} tokens are given to answer; 'budget closed' counts the "
              f"answers that needed it." if table.get("think_budget") else " No thinking budget.")
    lines = ["# Exam benchmarks", "", f"Protocol: **{table['protocol']}**: {table['protocol_detail']}.{budget} "
             f"Base = the same weights with the adapter disabled. Each accuracy: value [95% bootstrap interval over "
             f"questions]; the average weights each benchmark equally. Unextracted answers count as wrong.", "",
             benchmark_table(table), "", "![benchmarks](metrics.png)", "", "## Rows", ""]
    lines += [f"- **{name}**: {row['dataset']}: {row['sampled']}. {row['description']}"
              for name, row in table["benchmarks"].items()]
    models = [m for m in ("base", "tuned") if m in table["average"]]
    lines += ["", "## Answer statuses", ""] + [f"- {name}, {m}: {row[m]['statuses']} (mean {row[m]['mean_tokens']:.0f} "
                                              f"tokens)" for name, row in table["benchmarks"].items() for m in models]
    if table.get("contamination") is not None:
        lines += ["", "## Contamination (training rows sharing 64+ characters with a question, HuatuoGPT-o1's rule)",
                  ""] + [f"- {name}: {c['count']} training row(s) of the adapter's data overlap the {c['checked']} "
                         f"evaluated questions" + (f", e.g. {c['example']}" if c["example"] else "")
                         for name, c in table["contamination"].items()]
    refs = reference_lines(table)
    if refs:
        lines += ["", "## Published reference numbers", "", "For orientation only: other models, the full sets, "
                  "their own protocol (HuatuoGPT-o1's is `--protocol huatuo`).", ""] + refs
    files["report"].write_text("\n".join(lines) + "\n")
    return files
