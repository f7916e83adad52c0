"""Judges of candidate answers, each giving a score from 0 to 1 (or None: no readable verdict).

  model      a chat model (JUDGE_MODEL) asked with a rubric: factual accuracy, completeness and key points, seeing
             the reference answer when there is one (the RLAIF step of SFT + RLAIF on UltraMedical)
  reference  ROUGE-L F of the response against the reference answer (no model)
  choice     1 for the right letter of a multiple-choice row, else 0 (no model)

Every judge requires the answer format first: an answer that is not complete (tags.parse_answer) scores 0 and is
not shown to the judge. Every judge then judges the response part alone, cut by the run's style parser: the model
judge is never shown the reasoning (a small judge is most easily swayed by it), and an answer with no response scores 0
unseen, as an answer out of format does. A small judge is a weak judge: its scores say more about the layout than
about medicine.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from medreason.answers.choices import extract_choice
from medreason.answers.generation import GREEDY, Sampling, generate
from medreason.answers.tags import parse_answer
from medreason.config.errors import UserError
from medreason.config.hardware import torch_dtype
from medreason.evaluate.metrics import rouge_l_scores
from medreason.model.for_training import load_tokenizer, resolve_model_path

JUDGES = ("model", "reference", "choice")
RUBRIC_SYSTEM = "You are a strict examiner of medical answers. You grade answers; you never answer the question."
RUBRIC = (
    "Grade the candidate answer to the medical question below with one score from 0 to 1, weighing equally:\n"
    "- factual accuracy: is what it says medically correct?\n"
    "- completeness: does it answer the whole question?\n"
    "- key points: does it cover the key points{of_reference}?\n"
    "0 means wrong or useless, 1 means correct, complete and covering every key point.\n\n"
    "Question:\n{question}\n\n{reference_block}Candidate answer:\n{answer}\n\n"
    "Reply with one line: Score: <a number from 0 to 1>"
)
VERDICT_OPENING = "Score:"  # written at the start of the judge's reply, so even a small model answers with a number
PROBES = 2  # verdicts asked before any candidate is written: a judge that gives no readable one stops the run
NO_RESPONSE = "no response to judge"  # the said of an answer whose response part is empty: it scores 0 unseen

_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
_SCALE = re.compile(r"(?:from|between|on a scale of)\s+0(?:\.0)?\s+(?:to|and)\s+1(?:\.0)?(?![\d.]*\d)"
                    r"|\b0\s*-\s*1\b(?!\.\d)", re.I)  # an echo of the scale, "from 0 to 1" or "(0-1)"
_LABELLED = re.compile(rf"\bscore\b[*\s:=]*(?:is|of|would be|=)?[*\s:=]*{_NUMBER}"
                       rf"(?:\s*(?:/|out of)\s*{_NUMBER}|\s*(%|percent))?", re.I)
_FRACTION = re.compile(rf"{_NUMBER}\s*(?:/|out of)\s*{_NUMBER}", re.I)
_PERCENT = re.compile(rf"{_NUMBER}\s*(?:%|percent)", re.I)
_PLAIN = re.compile(rf"(?<![\d.]){_NUMBER}(?!\d)")


@dataclass(frozen=True)
class Verdict:
    score: float | None  # 0..1, or None when the judge's reply held no readable score
    said: str  # what the judge wrote (model judge), or how the score was computed

    @property
    def readable(self) -> bool:
        return self.score is not None


def _ratio(numerator: str, denominator: str | None, percent: str | None) -> float | None:
    value = float(numerator)
    if denominator is not None:
        if float(denominator) <= 0:
            return None
        value /= float(denominator)
    elif percent:
        value /= 100
    return value if 0.0 <= value <= 1.0 else None


def parse_verdict(text: str) -> float | None:
    """The score a judge wrote, in 0..1, or None when there is none or it is ambiguous.

    A labelled score wins ("Score: 0.7", "score of 7/10", "Score: 70%"); the first label counts, and one outside
    0..1 is unreadable ("Score: 7"). Otherwise every fraction, percentage and bare number in 0..1 is a candidate once
    an echo of the scale ("from 0 to 1") is removed: exactly one distinct value is the score, several are ambiguous."""
    text = _SCALE.sub(" ", text)
    labelled = _LABELLED.search(text)
    if labelled:
        return _ratio(*labelled.groups())
    values, rest = set(), text
    for pattern, to_value in ((_FRACTION, lambda m: _ratio(m[1], m[2], None)),
                              (_PERCENT, lambda m: _ratio(m[1], None, "%"))):
        for match in pattern.finditer(rest):
            values.add(to_value(match))
        rest = pattern.sub(" ", rest)
    values |= {float(m[1]) for m in _PLAIN.finditer(rest) if float(m[1]) <= 1.0}
    values.discard(None)
    return values.pop() if len(values) == 1 else None


def rubric_messages(question: str, answer: str, reference: str | None) -> list[dict]:
    block = f"Reference answer (written by an expert):\n{reference.strip()}\n\n" if reference else ""
    prompt = RUBRIC.format(question=question.strip(), answer=answer.strip(), reference_block=block,
                           of_reference=" of the reference answer" if reference else "")
    return [{"role": "system", "content": RUBRIC_SYSTEM}, {"role": "user", "content": prompt}]


class ModelJudge:
    """A chat model asked with the rubric, its reply opened with "Score:" (VERDICT_OPENING). One greedy verdict per
    answer, or with samples > 1 that many sampled verdicts averaged over the readable ones (self-consistency: a
    judge that writes the same number for every answer, as a 135M model does, then still ranks them). It is shown
    each answer's response part (the style's parser), never the reasoning."""

    name = "model"

    def __init__(self, model, tokenizer, label: str, max_new_tokens: int = 16, batch_size: int = 8,
                 disable_adapter: bool = False, samples: int = 1, temperature: float = 1.0, seed: int = 0,
                 style="think_response"):
        self.model, self.tokenizer, self.label = model, tokenizer, label
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.disable_adapter = disable_adapter  # the judge is the policy's own base model: its adapter switched off
        self.samples, self.temperature, self.seed = samples, temperature, seed
        self.style = style  # the run's answer layout, whose parser cuts the response out of an answer

    def score(self, questions, answers: list[str]) -> list[Verdict]:
        """Verdicts on whole answers: the judge sees each one's response part; one with none scores 0 unseen."""
        responses = [parse_answer(answer, self.style).response for answer in answers]
        shown = [i for i, response in enumerate(responses) if response.strip()]
        verdicts = [Verdict(0.0, NO_RESPONSE)] * len(answers)
        if shown:
            for i, verdict in zip(shown, self.score_responses([questions[i] for i in shown],
                                                              [responses[i] for i in shown])):
                verdicts[i] = verdict
        return verdicts

    def score_responses(self, questions, responses: list[str]) -> list[Verdict]:
        """Verdicts on response texts as they are (a probe's reference answer, an answer's response part)."""
        import contextlib

        texts = [self.tokenizer.apply_chat_template(rubric_messages(q.text, r, q.reference), tokenize=False,
                                                    add_generation_prompt=True) + VERDICT_OPENING
                 for q, r in zip(questions, responses, strict=True) for _ in range(self.samples)]
        sampling = GREEDY if self.samples == 1 else Sampling(do_sample=True, temperature=self.temperature, top_p=1.0)
        context = self.model.disable_adapter() if self.disable_adapter else contextlib.nullcontext()
        with context:
            outs = generate(self.model, self.tokenizer, texts, self.max_new_tokens, self.batch_size, sampling=sampling,
                            desc="judging", progress=len(texts) > self.batch_size, seed=self.seed)
        said = [(VERDICT_OPENING + out.text).strip() for out in outs]
        return [_combined(said[i:i + self.samples]) for i in range(0, len(said), self.samples)]


def _combined(replies: list[str]) -> Verdict:
    scores = [s for s in map(parse_verdict, replies) if s is not None]
    said = " | ".join(" ".join(reply.split())[:48] for reply in replies)
    return Verdict(sum(scores) / len(scores) if scores else None, said)


class ReferenceJudge:
    """ROUGE-L F of the response against the reference answer (metrics.rouge_l_scores, in the run's layout)."""

    name = "reference"
    label = "ROUGE-L against the reference"

    def __init__(self, style="think_response"):
        self.style = style

    def score(self, questions, answers: list[str]) -> list[Verdict]:
        scores = rouge_l_scores(answers, [q.reference for q in questions], self.style)
        return [Verdict(s, f"ROUGE-L {s:.3f}") for s in scores]


class ChoiceJudge:
    """1 when the letter extracted from the answer (choices.extract_choice) is the row's answer, else 0."""

    name = "choice"
    label = "multiple-choice correctness"

    def __init__(self, style="think_response"):
        self.style = style

    def score(self, questions, answers: list[str]) -> list[Verdict]:
        verdicts = []
        for question, answer in zip(questions, answers, strict=True):
            letter = extract_choice(answer, question.options, self.style)
            verdicts.append(Verdict(float(letter == question.correct),
                                    f"chose {letter or 'nothing'}, answer {question.correct}"))
        return verdicts


def check_judge(judge: str, questions, judge_model: str) -> None:
    """Before any model loads: the judge exists, the questions carry what it needs, a model judge's tokenizer loads."""
    if judge not in JUDGES:
        raise UserError(f"JUDGE={judge!r}: choose one of {', '.join(JUDGES)} ('model' asks JUDGE_MODEL with the "
                        f"rubric; 'reference' and 'choice' need no model).")
    if judge == "reference" and not all(q.reference for q in questions):
        missing = sum(not q.reference for q in questions)
        raise UserError(f"JUDGE='reference' scores answers against a reference answer, and {missing} of "
                        f"{len(questions)} questions have none. Fix: medical-o1 rows (Question, Complex_CoT, Response) "
                        f"as DATASET, or --JUDGE=model.")
    if judge == "choice" and not all(q.options for q in questions):
        raise UserError("JUDGE='choice' scores the letter of multiple-choice rows, and these questions have no "
                        "options. Fix: rows {question, options, answer} as DATASET, or --JUDGE=model / reference.")
    if judge == "model":
        judge_tokenizer(judge_model)


def judge_answers(judge, questions, answers: list[str], complete: list[bool]) -> list[Verdict]:
    """Verdicts for answers to questions: an incomplete answer scores 0 without being judged."""
    verdicts: list[Verdict | None] = [None if ok else Verdict(0.0, "incomplete answer (format required)")
                                      for ok in complete]
    todo = [i for i, ok in enumerate(complete) if ok]
    if todo:
        for i, verdict in zip(todo, judge.score([questions[i] for i in todo], [answers[i] for i in todo])):
            verdicts[i] = verdict
    return verdicts


def unreadable_error(judge, verdicts: list[Verdict], when: str) -> UserError:
    said = next((v.said for v in verdicts if v.said), "")
    return UserError(f"JUDGE_MODEL={judge.label!r} gave no readable score in {len(verdicts)} verdicts {when} (it "
                     f"wrote {said[:80]!r}). Fix: a larger chat model as --JUDGE_MODEL (e.g. "
                     f"Qwen/Qwen2.5-3B-Instruct), more --JUDGE_MAX_NEW_TOKENS, or a judge that needs no model: "
                     f"--JUDGE=reference (rows with reference answers) or --JUDGE=choice (multiple-choice rows).")


def probe(judge: ModelJudge, questions) -> list[Verdict]:
    """A few verdicts before the long part: each probe question's reference answer (or a refusal, when it has none)
    as the candidate's response. No readable verdict at all stops the run here, not after the candidates are
    written."""
    chosen = questions[:PROBES]
    responses = [q.reference or "I do not know." for q in chosen]
    verdicts = judge.score_responses(chosen, responses)
    if not any(v.readable for v in verdicts):
        raise unreadable_error(judge, verdicts, "to probe questions, before any candidate was written")
    return verdicts


def judge_tokenizer(judge_model: str):
    """The judge model's tokenizer, loaded before anything long: a judge that cannot be found fails in seconds."""
    try:
        tokenizer = load_tokenizer(resolve_model_path(judge_model))
    except UserError as e:
        reason = str(e).split(": cannot load its tokenizer ")[-1].split(". Fix:")[0]
        raise UserError(f"JUDGE_MODEL={judge_model!r} cannot be loaded {reason}. Fix: a local folder or Hub id of a "
                        f"chat model, --JUDGE_MODEL=embedded offline, or a judge that needs no model: "
                        f"--JUDGE=reference / --JUDGE=choice.") from None
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"JUDGE_MODEL={judge_model!r} has no chat template, so it cannot be asked the rubric. Fix: an "
                        f"instruction-tuned chat model (e.g. Qwen/Qwen2.5-3B-Instruct).")
    return tokenizer


def load_judge(cfg, plan, style, policy=None, policy_tokenizer=None, policy_base: str | None = None):
    """The run's judge. A model judge whose weights are the policy's own base (the demo: the embedded model judges
    its fine-tuned self) reuses the policy with its adapters switched off: nothing is loaded twice."""
    if cfg.JUDGE == "reference":
        return ReferenceJudge(style)
    if cfg.JUDGE == "choice":
        return ChoiceJudge(style)
    path = resolve_model_path(cfg.JUDGE_MODEL)
    if policy is not None and policy_base is not None and path == resolve_model_path(policy_base):
        print(f"[judge] {cfg.JUDGE_MODEL}: the policy's own base model, its adapters switched off while judging")
        return ModelJudge(policy, policy_tokenizer, cfg.JUDGE_MODEL, disable_adapter=True, style=style,
                          **_judging(cfg))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(plan.precision)).to(plan.device).eval()
    print(f"[judge] {cfg.JUDGE_MODEL} loaded ({plan.precision})")
    return ModelJudge(model, judge_tokenizer(cfg.JUDGE_MODEL), cfg.JUDGE_MODEL, style=style, **_judging(cfg))


def _judging(cfg) -> dict:
    if cfg.JUDGE_SAMPLES < 1:
        raise UserError(f"JUDGE_SAMPLES={cfg.JUDGE_SAMPLES}: at least 1 (1 = one greedy verdict per answer).")
    return dict(max_new_tokens=cfg.JUDGE_MAX_NEW_TOKENS, batch_size=cfg.EVAL_BATCH_SIZE, samples=cfg.JUDGE_SAMPLES,
                temperature=cfg.JUDGE_TEMPERATURE, seed=cfg.SEED)


def release(judge, device: str) -> None:
    """On a GPU, free a judge's own weights before DPO needs the memory; a judge sharing the policy holds none."""
    import gc
    if device == "cuda" and isinstance(judge, ModelJudge) and not judge.disable_adapter:
        judge.model = None
        gc.collect()
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
