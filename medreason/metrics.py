"""Per-answer scores: ROUGE-L F of the <response> part (rouge-score, stemmed) and format compliance."""
from __future__ import annotations

from .tags import parse_answer


def response_part(answer: str) -> str:
    """What is scored against the reference: the <response> block, or the whole text when it has no tags."""
    parsed = parse_answer(answer)
    return answer if parsed.status == "no_tags" else parsed.response


def rouge_l_scores(answers: list[str], references: list[str]) -> list[float]:
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, response_part(answer))["rougeL"].fmeasure
            for answer, ref in zip(answers, references, strict=True)]


def compliance_flags(answers: list[str]) -> list[float]:
    """1.0 for a closed, non-empty <think> followed by a closed, non-empty <response>, else 0.0."""
    return [float(parse_answer(answer).complete) for answer in answers]


def status_counts(answers: list[str]) -> dict[str, int]:
    statuses = [parse_answer(answer).status for answer in answers]
    return {s: statuses.count(s) for s in sorted(set(statuses))}
