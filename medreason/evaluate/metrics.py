"""Per-answer scores: ROUGE-L F of the response part (rouge-score, stemmed) and format compliance, in the layout of
the run's prompt style (tags.parse_answer). `ended` (one flag per answer, default all True) says which answers
stopped on their own rather than on the token budget: for layouts with no closing marker it decides completeness."""
from __future__ import annotations

from medreason.answers.tags import parse_all


def response_part(answer: str, parsed) -> str:
    """What is scored against the reference: the response, or the whole text when it has no layout markers."""
    return answer if parsed.status == "no_tags" else parsed.response


def rouge_l_scores(answers: list[str], references: list[str], style="think_response",
                   ended: list[bool] | None = None) -> list[float]:
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, response_part(answer, parsed))["rougeL"].fmeasure
            for answer, parsed, ref in zip(answers, parse_all(answers, style, ended), references, strict=True)]


def compliance_flags(answers: list[str], style="think_response", ended: list[bool] | None = None) -> list[float]:
    """1.0 for an answer whose reasoning closed and whose non-empty response ended, else 0.0."""
    return [float(parsed.complete) for parsed in parse_all(answers, style, ended)]


def status_counts(answers: list[str], style="think_response", ended: list[bool] | None = None) -> dict[str, int]:
    statuses = [parsed.status for parsed in parse_all(answers, style, ended)]
    return {s: statuses.count(s) for s in sorted(set(statuses))}
