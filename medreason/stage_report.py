"""The preference stage's report and model card: SFT vs DPO side by side, the judge's win rate, trl's reward
margins, and the card's account of both stages."""
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
    from .report import ORDER, fmt_metric, plot_loss_curve
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
        for name in ("sft", "dpo"):
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
    from huggingface_hub import ModelCard, ModelCardData

    from .embedded import EMBEDDED, EMBEDDED_HUB_ID
    from .publishing import license_for
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
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    path = out / "model_card.md"
    card.save(path)
    return path
