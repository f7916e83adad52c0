"""Answer-quality metrics: ROUGE-L F of the <response> part (rouge-score) and format compliance."""
from __future__ import annotations

from .tags import parse_answer


def rouge_l(predictions: list[str], references: list[str]) -> float:
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0


def score_answers(answers: list[str], references: list[str]) -> dict:
    """Parse each answer; ROUGE-L on its response part (the whole text when untagged); share complete."""
    parsed = [parse_answer(a) for a in answers]
    responses = [p.response if p.status != "no_tags" else a for p, a in zip(parsed, answers)]
    statuses = [p.status for p in parsed]
    return {"rouge_l": rouge_l(responses, references),
            "format_compliance": sum(s == "complete" for s in statuses) / max(len(statuses), 1),
            "statuses": {s: statuses.count(s) for s in sorted(set(statuses))}}
