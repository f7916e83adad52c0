"""The reports and model cards of the stages after SFT: SFT vs DPO side by side with the judge's win rate and trl's
reward margins (preference_tuning.py), and SFT vs RL with the reward curves and every stage named (rl_tuning.py)."""
from __future__ import annotations

import json
from pathlib import Path


def margins(log_history: list[dict]) -> tuple[float | None, float | None]:
    """trl's logged rewards/margins (chosen minus rejected implicit reward) at the first and the last log."""
    values = [e["rewards/margins"] for e in log_history if "rewards/margins" in e]
    return (values[0], values[-1]) if values else (None, None)


STAGE_NOTE = ("SFT = the supervised adapter (trl's SFTTrainer on medical chains of thought), DPO = the same adapter "
              "after trl's DPOTrainer on chosen/rejected pairs of its own sampled answers, scored by the judge; the "
              "DPO reference model is the SFT adapter, frozen. Same questions, same prompt, greedy decoding.")


def comparison_json(results: dict, win: dict | None) -> dict:
    table = {name: answers.metrics for name, answers in results.items()}
    table["difference"] = {m: results["dpo"].metrics[m]["value"] - results["sft"].metrics[m]["value"]
                           for m in results["dpo"].metrics}
    if win:
        table["judge_win_rate"] = {k: v for k, v in win.items() if k != "verdicts"}
    return table


def write_report(out_dir: Path, results: dict, win: dict | None, questions, meta: dict,
                 log_history: list[dict]) -> Path:
    """evaluation/results.json, report.md and loss_curve.png: SFT vs DPO on the held-out questions."""
    from medreason.evaluate.report import ORDER, fmt_metric, plot_loss_curve
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**meta, **comparison_json(results, win)}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    loss = plot_loss_curve(log_history, out_dir / "loss_curve.png")
    first, last = margins(log_history)
    lines = ["# SFT vs DPO", "", f"Data: {meta.get('data', '?')} (n = {len(questions)} held-out questions). "
             + STAGE_NOTE + " Each cell: value [95% bootstrap interval].", "",
             "| metric | SFT | DPO | difference |", "|---|---|---|---|"]
    lines += [f"| {name} | {fmt_metric(results['sft'].metrics[name])} | {fmt_metric(results['dpo'].metrics[name])} | "
              f"{payload['difference'][name]:+.3f} |" for name in ORDER if name in results["dpo"].metrics]
    lines += ["", win_sentence(win), ""]
    if first is not None:
        lines += [f"DPO training: trl's rewards/margins (chosen minus rejected implicit reward, beta x log-ratio to "
                  f"the SFT model) went from {first:.4f} at the first log to {last:.4f} at the last.", ""]
    lines += (["![loss curve](loss_curve.png)", ""] if loss else []) + ["## Side by side", ""]
    lines += side_by_side(questions, results, win)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def win_sentence(win: dict | None) -> str:
    if not win:
        return "No judge win rate (no held-out questions)."
    rate = "n/a" if win["win_rate"] is None else f"{win['win_rate']:.2f}"
    return (f"Judge ({win['judge']}) win rate of DPO over SFT: {rate} ({win['wins']} wins, {win['ties']} ties, "
            f"{win['losses']} losses, {win['unreadable']} without two readable verdicts; ties count half). An "
            f"incomplete answer scores 0. A small judge is a weak judge: read its verdicts below before its rate.")


def side_by_side(questions, results: dict, win: dict | None, count: int = 3, width: int = 700) -> list[str]:
    def cut(text):
        return text if len(text) <= width else text[:width] + " …"
    lines = []
    for i, question in enumerate(questions[:count]):
        lines += [f"### Example {i + 1}", "", f"**Question:** {cut(question.text)}", ""]
        if question.reference:
            lines += [f"**Reference:** {cut(question.reference)}", ""]
        for name in results:  # the stages compared, in order (sft, then dpo or rl)
            score, said = win["verdicts"][name][i] if win else (None, "")
            verdict = f" (judge {'unreadable' if score is None else f'{score:.2f}'}: {said})" if win else ""
            lines += [f"**{name.upper()}{verdict}:**", "", "```text", cut(results[name].answers[i]), "```", ""]
    return lines


def card_section(info: dict, base: str, pair_counts: dict, comparison: dict | None) -> str:
    """The model card's account of both stages: what each trained on and what the evaluation measured."""
    sft, dpo = info["stages"][0]["trained_by"], info["stages"][1]["trained_by"]
    data = {"demo": "the project's illustrative demo rows"}.get(sft.get("DATASET"), sft.get("DATASET", "?"))
    lines = ["## Training: two stages", "",
             f"1. **SFT** (trl `SFTTrainer`, `medical_fine_tuning.py`): a LoRA adapter on {base} trained on "
             f"{data} ({sft.get('MAX_STEPS', '?')} updates "
             f"at learning rate {sft.get('LEARNING_RATE', '?')}), answering as `{info['prompt_style']}`.",
             f"2. **DPO** (trl `DPOTrainer`, `preference_tuning.py`): the SFT model wrote {dpo['NUM_CANDIDATES']} "
             f"sampled answers per question (temperature {dpo['TEMPERATURE']}, top-p {dpo['TOP_P']}); the judge "
             f"({info['stages'][1]['judge']}) scored each from 0 to 1 (factual accuracy, completeness, key points; "
             f"an incomplete answer scores 0); the best became *chosen*, the worst *rejected*. "
             f"{pair_counts.get('pairs', '?')} pairs ({pair_counts.get('tie', 0)} ties and "
             f"{pair_counts.get('near_tie', 0)} margins below {dpo['MIN_MARGIN']} dropped); beta {dpo['BETA']}, "
             f"{dpo['MAX_STEPS']} updates at learning rate {dpo['LEARNING_RATE']}. The reference model of DPO is the "
             f"SFT adapter (frozen), so DPO moves away from the SFT model, not from the raw base.", ""]
    if comparison:
        lines += ["| metric | SFT | DPO |", "| --- | --- | --- |"]
        lines += [f"| {name} | {comparison['sft'][name]['value']:.3f} | {comparison['dpo'][name]['value']:.3f} |"
                  for name in comparison["dpo"]]
        win = comparison.get("judge_win_rate")
        if win:
            lines += ["", win_sentence(win)]
    return "\n".join(lines)


def write_card(out: Path, info: dict, pair_counts: dict, comparison: dict | None) -> Path:
    """OUTPUT_DIR/model_card.md: huggingface_hub's ModelCard (metadata + body) for the DPO adapter."""
    from huggingface_hub import ModelCardData

    from medreason.model.embedded import EMBEDDED, EMBEDDED_HUB_ID
    from medreason.publish.hub import license_for
    base = EMBEDDED_HUB_ID if info["model_name"] == EMBEDDED else info["model_name"]
    data = ModelCardData(base_model=base, library_name="peft", license=license_for(base), language=["en"],
                         pipeline_tag="text-generation", model_name=out.name,
                         tags=["medical", "reasoning", "lora", "sft", "dpo", "rlaif", "trl"])
    body = (f"# {out.name}\n\nA LoRA adapter for **{base}**, trained in two stages: supervised fine-tuning, then "
            f"DPO on pairs of its own answers judged by an AI judge.\n\n> **Not medical advice.** For education and "
            f"research only; it can be wrong, and it was not reviewed by clinicians.\n\n"
            f"{card_section(info, base, pair_counts, comparison)}\n\n## How to use\n\n```bash\npython inference.py "
            f"--adapter {out / 'adapter'} --question \"…\"\n```\n\nThe adapter's training_info.json keeps the SFT "
            f"prompt (style `{info['prompt_style']}` and its system prompt), so it is asked exactly as trained.\n")
    return _save_card(out, data, body)


# --- the RL stage (rl_tuning.py) -----------------------------------------------------------------------------------

RL_NOTE = ("SFT = the adapter the RL stage started from; RL = the same adapter after trl's GRPOTrainer with the "
           "verifiable rewards below. Same held-out questions (never trained on, contamination-checked), same prompt, "
           "greedy decoding, the project's evaluator: accuracy counts an answer with no single extractable option as "
           "wrong.")


def rl_comparison_json(results: dict, statuses: dict) -> dict:
    """The metrics of both stages with their intervals, the differences, and each stage's answer statuses."""
    table = {name: answers.metrics for name, answers in results.items()}
    table["difference"] = {m: results["rl"].metrics[m]["value"] - results["sft"].metrics[m]["value"]
                           for m in results["rl"].metrics}
    table["statuses"] = statuses
    return table


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
    from medreason.evaluate.report import ORDER, fmt_metric
    out_dir.mkdir(parents=True, exist_ok=True)
    table = rl_comparison_json(results, statuses)
    (out_dir / "results.json").write_text(json.dumps({**meta, **table}, indent=2) + "\n")
    curves = plot_reward_curves(log_history, reward_names, out_dir / "reward_curves.png")
    lines = ["# SFT vs RL", "", f"Data: {meta.get('data', '?')} (n = {len(questions)} held-out questions). "
             + RL_NOTE + f" Protocol: {meta.get('protocol', '?')}. Each cell: value [95% bootstrap interval]; overlapping intervals mean the difference is "
             "not distinguishable from noise at this sample size.", "",
             "| metric | SFT | RL | difference |", "|---|---|---|---|"]
    lines += [f"| {name} | {fmt_metric(results['sft'].metrics[name])} | {fmt_metric(results['rl'].metrics[name])} | "
              f"{table['difference'][name]:+.3f} |" for name in ORDER if name in results["rl"].metrics]
    lines += ["", "Answer statuses (tags.py): " + "; ".join(
        f"{name.upper()} {', '.join(f'{k} {v}' for k, v in counts.items())}" for name, counts in
        table["statuses"].items()), "", "## Rewards during training", ""] + reward_lines(log_history, reward_names)
    if timing:
        lines += ["", f"Seconds per optimizer step: {timing['mean_total_s']:.1f} on average over "
                      f"{timing['steps_timed']} steps, of which {timing['mean_generation_s']:.1f} sampling and "
                      f"scoring answers and {timing['mean_update_s']:.1f} the update."]
    lines += ["", "Rising rewards show the policy learning what the rewards pay for on its training questions; only "
                  "the held-out table above speaks to the exam, and a small model's gains there are not medical "
                  "skill.", ""]
    lines += (["![reward curves](reward_curves.png)", ""] if curves else []) + ["## Side by side", ""]
    lines += side_by_side(questions, {"sft": results["sft"], "rl": results["rl"]}, None)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def stage_lines(info: dict, base: str) -> list[str]:
    """One numbered line per stage in training_info.json's stages (SFT, DPO, RL), whatever the order."""
    lines = []
    for n, stage in enumerate(info.get("stages", []), start=1):
        by = stage.get("trained_by", {})
        if stage["stage"] == "sft":
            data = {"demo": "the project's illustrative demo rows"}.get(by.get("DATASET"), by.get("DATASET", "?"))
            lines.append(f"{n}. **SFT** (trl `SFTTrainer`, `medical_fine_tuning.py`): a LoRA adapter on {base} "
                         f"trained on {data} ({by.get('MAX_STEPS', '?')} updates at learning rate "
                         f"{by.get('LEARNING_RATE', '?')}), answering as `{info['prompt_style']}`.")
        elif stage["stage"] == "dpo":
            lines.append(f"{n}. **DPO** (trl `DPOTrainer`, `preference_tuning.py`): pairs of the model's own sampled "
                         f"answers judged by {stage.get('judge', '?')}; beta {by.get('BETA', '?')}, "
                         f"{by.get('MAX_STEPS', '?')} updates at learning rate {by.get('LEARNING_RATE', '?')}.")
        elif stage["stage"] == "rl":
            rewards = ", ".join(f"{k} x{v:g}" for k, v in stage.get("rewards", {}).items())
            lines.append(f"{n}. **RL** (trl `GRPOTrainer`, `rl_tuning.py`): {by.get('NUM_GENERATIONS', '?')} sampled "
                         f"answers per question (temperature {by.get('TEMPERATURE', '?')}) scored by verifiable "
                         f"rewards ({rewards}) on {by.get('DATASET') or 'the demo questions'}; "
                         f"{by.get('MAX_STEPS', '?')} updates at learning rate {by.get('LEARNING_RATE', '?')}, KL beta "
                         f"{by.get('BETA', '?')} to the start adapter.")
    return lines


def write_rl_card(out: Path, info: dict, counts: dict, comparison: dict | None) -> Path:
    """OUTPUT_DIR/model_card.md: huggingface_hub's ModelCard naming every stage, with SFT vs RL on held-out
    questions."""
    from huggingface_hub import ModelCardData

    from medreason.model.embedded import EMBEDDED, EMBEDDED_HUB_ID
    from medreason.publish.hub import license_for
    base = EMBEDDED_HUB_ID if info["model_name"] == EMBEDDED else info["model_name"]
    names = [s["stage"] for s in info.get("stages", [])]
    data = ModelCardData(base_model=base, library_name="peft", license=license_for(base), language=["en"],
                         pipeline_tag="text-generation", model_name=out.name,
                         tags=["medical", "reasoning", "lora", *names, "grpo", "trl"])
    lines = [f"## Training: {len(names)} stages", "", *stage_lines(info, base), "",
             f"Training questions: {counts.get('train', '?')} ({counts.get('refused', 0)} refused for sharing 64+ "
             f"characters with a held-out or benchmark question).", ""]
    if comparison:
        lines += ["| metric (held-out) | SFT | RL |", "| --- | --- | --- |"]
        lines += [f"| {name} | {comparison['sft'][name]['value']:.3f} | {comparison['rl'][name]['value']:.3f} |"
                  for name in comparison["rl"]]
    body = (f"# {out.name}\n\nA LoRA adapter for **{base}**, trained in {len(names)} stages "
            f"({' -> '.join(n.upper() for n in names)}).\n\n> **Not medical advice.** For education and research "
            f"only; it can be wrong, and it was not reviewed by clinicians.\n\n" + "\n".join(lines) +
            f"\n\n## How to use\n\n```bash\npython inference.py --adapter {out / 'adapter'} --question \"…\"\n```\n\n"
            f"The adapter's training_info.json keeps the SFT prompt (style `{info['prompt_style']}`), so it is asked "
            f"exactly as trained.\n")
    return _save_card(out, data, body)


def _save_card(out: Path, data, body: str) -> Path:
    """OUTPUT_DIR/model_card.md: the card's YAML metadata (huggingface_hub's ModelCardData) above its text."""
    from huggingface_hub import ModelCard
    path = out / "model_card.md"
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}").save(path)
    return path
