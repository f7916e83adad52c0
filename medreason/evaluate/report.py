"""Write an evaluation: results.json, report.md (base, tuned, difference), loss-curve and metrics PNGs."""
from __future__ import annotations

import json
import math
from pathlib import Path

ORDER = ("rouge_l", "format_compliance", "perplexity", "accuracy", "extraction_rate")
LOWER_IS_BETTER = {"perplexity"}


def metrics_json(results: dict) -> dict:
    table = {name: answers.metrics for name, answers in results.items()}
    if "base" in results:
        table["difference"] = {m: results["tuned"].metrics[m]["value"] - results["base"].metrics[m]["value"]
                               for m in results["tuned"].metrics}
    return table


def metrics_table(table: dict) -> str:
    """Markdown: one row per metric, one column per model (and the difference), from metrics_json's table."""
    models = [m for m in table if m != "difference"]
    lines = ["| metric | " + " | ".join(models) + (" | difference |" if "difference" in table else ""),
             "|---" * (len(models) + 1 + ("difference" in table)) + "|"]
    for name in ORDER:
        if name in table["tuned"]:
            diff = table.get("difference", {}).get(name)
            lines.append(f"| {name} | " + " | ".join(fmt_metric(table[m][name]) for m in models)
                         + (f" | {diff:+.3f} |" if diff is not None else " |"))
    return "\n".join(lines)


def read_run(run_dir: Path) -> dict:
    """What a finished training run wrote, for a notebook or a report: its results, metrics table, answer statuses,
    evaluated samples and training log."""
    from medreason.config.errors import UserError
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


def side_by_side(rows: list[dict], results: dict, kind: str, count: int = 3, width: int = 700) -> list[str]:
    def cut(text):
        return text if len(text) <= width else text[:width] + " …"
    lines = []
    for i, row in enumerate(rows[:count]):
        question = row["Question"] if kind == "reasoning" else row["question"]
        reference = row["Response"] if kind == "reasoning" else f"{row['answer']}. {row['options'][row['answer']]}"
        lines += [f"### Example {i + 1}", "", f"**Question:** {question}", "", f"**Reference:** {cut(reference)}", ""]
        for name, answers in results.items():
            lines += [f"**{name.capitalize()}:**", "", "```text", cut(answers.answers[i]), "```", ""]
    return lines


def write_report(out_dir: Path, results: dict, rows: list[dict], kind: str, meta: dict,
                 log_history: list[dict] | None = None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"results": out_dir / "results.json", "report": out_dir / "report.md"}
    payload = {"kind": kind, **meta, **metrics_json(results)}
    files["results"].write_text(json.dumps(payload, indent=2) + "\n")
    files["metrics_chart"] = plot_metrics(results, out_dir / "metrics.png")
    loss = plot_loss_curve(log_history or [], out_dir / "loss_curve.png")
    if loss:
        files["loss_curve"] = loss
    lines = ["# Evaluation report", "", f"Data: {meta.get('data', '?')} ({kind}, n = {len(rows)}). "
             "Each cell: value [95% bootstrap interval]. Base = the same weights with the adapter disabled. "
             "Higher is better, except perplexity. Overlapping intervals mean the difference is not yet "
             "distinguishable from noise at this sample size.", "", metrics_table(metrics_json(results))]
    lines += ["", "![metrics](metrics.png)", ""] + (["![loss curve](loss_curve.png)", ""] if loss else [])
    lines += safety_section(metrics_json(results))
    lines += ["## Side by side", ""] + side_by_side(rows, results, kind)
    files["report"].write_text("\n".join(lines) + "\n")
    return files


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
