"""The preference stage's data: questions, sampled candidate answers, chosen/rejected pairs, preference_pairs.jsonl.

Questions come from any of these layouts (data/layouts.py PREFERENCE; detected from the fields, named by kind):
  pairs      prompt, chosen, rejected              ready-made preference data (UltraMedical-Preference, or our own
                                                   preference_pairs.jsonl): candidates and judge are skipped
  reasoning  Question, Complex_CoT, Response       medical-o1 rows (the SFT run's validation.jsonl); Response is the
                                                   reference answer
  mcq        question, options, answer             multiple-choice rows; the right option is the reference
  questions  question (or Question, or prompt)     questions alone, no reference
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from medreason.answers.answering import answer_all
from medreason.answers.choices import mcq_question
from medreason.answers.generation import Sampling
from medreason.answers.prompts import prompt_length, prompt_messages, to_example, tokenize_example
from medreason.config.errors import UserError
from medreason.data.layouts import DataError, PREFERENCE, QUESTION_FIELDS, detect, text_problem
from medreason.data.readers import load_records, validate
from medreason.evaluate.comparison import validate_mcq
from medreason.evaluate.judging import ModelJudge, judge_answers, probe, unreadable_error

PAIRS_FILE = "preference_pairs.jsonl"


@dataclass(frozen=True)
class Question:
    text: str  # the user turn, as the SFT model is asked it (a multiple-choice row's options included)
    reference: str | None = None
    options: dict | None = None  # multiple-choice rows
    correct: str | None = None  # the right letter of a multiple-choice row
    row: dict | None = None  # the row as read (for the evaluator)


@dataclass
class Pair:
    prompt: str  # the question's user turn; the SFT prompt (system prompt, chat template) is applied at training
    chosen: str
    rejected: str
    score_chosen: float | None = None
    score_rejected: float | None = None
    reference: str | None = None
    judge: str | None = None

    @property
    def margin(self) -> float | None:
        if self.score_chosen is None or self.score_rejected is None:
            return None
        return self.score_chosen - self.score_rejected


# --- reading -----------------------------------------------------------------------------------------------------

def read_source(source: str, config: str | None = None, setting: str = "DATASET") -> tuple[str, list]:
    """(layout, rows): Questions for the question layouts, Pairs for ready-made preference data."""
    records = load_records(source, config, setting)
    layout = detect(records, source, PREFERENCE).kind_name  # "reasoning" for medical-o1 rows
    reader = {"pairs": _pairs, "reasoning": _reasoning, "mcq": _mcq, "questions": _questions}[layout]
    rows, dropped = reader(records, source)
    print(f"[questions] {len(rows)} {'pairs' if layout == 'pairs' else 'questions'} ({layout} layout) from {source}"
          + (f"; dropped {sum(dropped.values())}: {dict(dropped)}" if dropped else ""))
    if not rows:
        raise DataError(f"{source}: no usable rows ({len(records)} read, all dropped: {dict(dropped)}). Fix: every "
                        f"row needs non-empty text in the fields of its layout.")
    return layout, rows


def _reasoning(records, source):
    rows, dropped = validate(records, source)
    return [Question(r["Question"], r["Response"], row=r) for r in rows], dropped


def _mcq(records, source):
    rows = validate_mcq(records, source)
    return [Question(mcq_question(r["question"], r["options"]), f"{r['answer']}. {r['options'][r['answer']]}",
                     r["options"], r["answer"], r) for r in rows], Counter()


def _questions(records, source):
    questions, dropped = [], Counter()
    for record in records:
        field = next((f for f in QUESTION_FIELDS if f in record), None)
        problem = f"{field} {text_problem(record[field])}" if field else "no question field"
        if field and not text_problem(record[field]):
            questions.append(Question(record[field], None, row=record))
        else:
            dropped[problem] += 1
    return questions, dropped


def _turn_text(value) -> str | None:
    """A chosen/rejected answer as text: a string, or the last assistant turn of a message list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant":
        return value[-1].get("content")
    return None


def _prompt_text(value) -> str | None:
    """A pair's prompt as the question text: a string, or the (last) user turn of a message list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        users = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else None
    return None


def _pairs(records, source):
    pairs, dropped = [], Counter()
    for record in records:
        prompt, chosen, rejected = (_prompt_text(record.get("prompt")), _turn_text(record.get("chosen")),
                                    _turn_text(record.get("rejected")))
        problem = next((f"{name} {text_problem(value) or ''}".strip() for name, value in
                        (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)) if text_problem(value)), None)
        if problem:
            dropped[problem] += 1
        elif chosen.strip() == rejected.strip():
            dropped["chosen is the same text as rejected"] += 1
        else:
            pairs.append(Pair(prompt, chosen, rejected, record.get("score_chosen"), record.get("score_rejected"),
                              record.get("reference"), record.get("judge")))
    return pairs, dropped


def sft_validation_rows(sft_adapter: str) -> Path:
    """The SFT run's held-out rows: OUTPUT_DIR/validation.jsonl beside its adapter folder."""
    path = Path(sft_adapter).expanduser().parent / "validation.jsonl"
    if not path.is_file():
        raise UserError(f"DATASET='' means the SFT run's held-out rows, but {path} does not exist. Fix: "
                        f"--DATASET=<a file of questions, medical-o1 rows or preference pairs>, or point SFT_ADAPTER "
                        f"at OUTPUT_DIR/adapter of a finished medical_fine_tuning.py run.")
    return path


def split_held_out(rows: list, eval_samples: int, limit: int | None, seed: int) -> tuple[list, list]:
    """(rows for pairs, rows held out for the SFT vs DPO evaluation), seeded; `limit` caps the first."""
    if eval_samples < 0 or eval_samples >= len(rows):
        raise UserError(f"EVAL_SAMPLES={eval_samples} leaves no questions for pairs out of {len(rows)}. Fix: "
                        f"--EVAL_SAMPLES={max(0, len(rows) // 4)}, or more rows in DATASET.")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held_out, train = [rows[i] for i in order[:eval_samples]], [rows[i] for i in order[eval_samples:]]
    if limit is not None:
        if limit < 1:
            raise UserError(f"TRAIN_QUESTIONS={limit}: must be at least 1, or None for all.")
        train = train[:limit]
    print(f"[questions] {len(train)} for pairs, {len(held_out)} held out for SFT vs DPO (seed {seed})")
    return train, held_out


def as_questions(rows: list) -> list[Question]:
    """Held-out rows as Questions: ready-made pairs are asked their prompt, with the chosen answer as reference."""
    return [Question(r.prompt, r.chosen) if isinstance(r, Pair) else r for r in rows]


# --- candidates --------------------------------------------------------------------------------------------------

def sample_candidates(model, tokenizer, questions: list[Question], style, k: int, max_new_tokens: int,
                      batch_size: int, sampling, seed: int) -> list[list]:
    """k sampled answers per question from the SFT model, asked with the SFT prompt (answering.answer_all), seeded
    so a rerun writes the same candidates. Returns one list of k answering.Answer per question."""
    from transformers import set_seed

    if k < 2:
        raise UserError(f"NUM_CANDIDATES={k}: a pair needs at least 2 answers per question. Fix: --NUM_CANDIDATES=2.")
    set_seed(seed)  # torch's (and python's, numpy's) seed: sampling draws the same tokens on a rerun
    asked = [q.text for q in questions for _ in range(k)]
    answers = answer_all(model, tokenizer, asked, style, max_new_tokens, batch_size, sampling=sampling, seed=seed)
    return [answers[i * k:(i + 1) * k] for i in range(len(questions))]


# --- pairs ---------------------------------------------------------------------------------------------------------

def build_pairs(questions: list[Question], candidates: list[list[str]], verdicts: list[list], min_margin: float,
                judge: str) -> tuple[list[Pair], Counter]:
    """For each question, its best-scored candidate as chosen and its worst as rejected. Dropped and counted:
    'unreadable' (fewer than two readable verdicts), 'tie' (equal scores), 'near_tie' (margin below min_margin)."""
    pairs, counts = [], Counter()
    for question, answers, scored in zip(questions, candidates, verdicts, strict=True):
        readable = [(v.score, a) for a, v in zip(answers, scored, strict=True) if v.readable]
        if len(readable) < 2:
            counts["unreadable"] += 1
            continue
        readable.sort(key=lambda sa: sa[0])  # stable: of equal scores, the earlier candidate stays first
        (low, rejected), (high, chosen) = readable[0], readable[-1]
        if high - low <= 1e-9 or chosen.strip() == rejected.strip():
            counts["tie"] += 1
        elif high - low < min_margin - 1e-9:
            counts["near_tie"] += 1
        else:
            pairs.append(Pair(question.text, chosen, rejected, high, low, question.reference, judge))
    counts["pairs"] = len(pairs)
    return pairs, counts


def no_pairs_error(counts: Counter, min_margin: float, questions: int, candidates: int = 2) -> UserError:
    return UserError(f"no preference pairs left from {questions} questions ({counts['tie']} ties, "
                     f"{counts['near_tie']} margins below MIN_MARGIN={min_margin}, {counts['unreadable']} without two "
                     f"readable verdicts): DPO has nothing to learn from. Fix: more questions (DATASET, "
                     f"TRAIN_QUESTIONS), more candidates (--NUM_CANDIDATES={candidates * 2}), a lower --MIN_MARGIN, "
                     f"or a judge that tells answers apart (a larger --JUDGE_MODEL, or --JUDGE=reference).")


def write_pairs(path: Path, pairs: list[Pair]) -> Path:
    """preference_pairs.jsonl: one pair per line, with its scores and margin; readable back as DATASET."""
    with path.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps({**asdict(pair), "margin": pair.margin}, ensure_ascii=False) + "\n")
    return path


def make_pairs(model, tokenizer, questions: list[Question], style, judge, cfg, out: Path) -> tuple[list[Pair], Counter]:
    """Candidates from the SFT model, judged (probed first), paired and written to OUTPUT_DIR/preference_pairs.jsonl.
    No readable verdict at all, or no pair left after ties, is a UserError naming the fix."""
    if isinstance(judge, ModelJudge):
        probe(judge, questions)
    k = cfg.NUM_CANDIDATES
    print(f"[candidates] {k} sampled answers (temperature {cfg.TEMPERATURE}, top-p {cfg.TOP_P}, seed {cfg.SEED}) to "
          f"each of {len(questions)} questions, with the SFT prompt")
    sampling = Sampling(do_sample=True, temperature=cfg.TEMPERATURE, top_p=cfg.TOP_P)
    candidates = sample_candidates(model, tokenizer, questions, style, k, cfg.MAX_NEW_TOKENS,
                                   cfg.GENERATION_BATCH_SIZE, sampling, cfg.SEED)
    flat = [a for answers in candidates for a in answers]
    asked = [q for q in questions for _ in range(k)]
    verdicts = judge_answers(judge, asked, [a.text for a in flat], [a.status == "complete" for a in flat])
    judged = [v for v, a in zip(verdicts, flat) if a.status == "complete"]
    if judged and not any(v.readable for v in judged):
        raise unreadable_error(judge, judged, "to the candidates")
    by_question = [verdicts[i * k:(i + 1) * k] for i in range(len(questions))]
    pairs, counts = build_pairs(questions, [[a.text for a in c] for c in candidates], by_question, cfg.MIN_MARGIN,
                                getattr(judge, "label", judge.name))
    counts.update(candidates=len(flat), complete=sum(a.status == "complete" for a in flat),
                  unreadable_verdicts=sum(not v.readable for v in judged))
    out.mkdir(parents=True, exist_ok=True)
    write_pairs(out / PAIRS_FILE, pairs)
    print(f"[pairs] {counts['pairs']} pairs from {len(questions)} questions -> {out / PAIRS_FILE} ({counts['complete']}"
          f" of {counts['candidates']} candidates complete; dropped: {counts['tie']} ties, {counts['near_tie']} "
          f"below MIN_MARGIN={cfg.MIN_MARGIN}, {counts['unreadable']} without two readable verdicts; "
          f"{counts['unreadable_verdicts']} verdicts unreadable)")
    if not pairs:
        raise no_pairs_error(counts, cfg.MIN_MARGIN, len(questions), k)
    return pairs, counts


# --- DPO examples ----------------------------------------------------------------------------------------------

def to_dpo_example(pair: Pair, style, tokenizer) -> dict:
    """A pair as trl's preference example, with exactly the SFT prompt: conversational (system prompt + question,
    then the answer as the assistant turn), or for text-form styles (r1) the rendered prompt and the answers as text."""
    if style.as_text:
        prompt = to_example({"Question": pair.prompt, "Complex_CoT": "", "Response": ""}, style, tokenizer)["prompt"]
        return {"prompt": prompt, "chosen": pair.chosen, "rejected": pair.rejected}
    return {"prompt": prompt_messages(pair.prompt, style), "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}]}


def fit_questions(questions: list[Question], style, tokenizer, max_len: int) -> list[Question]:
    """Questions whose SFT prompt leaves room for an answer within MAX_SEQ_LENGTH; the others dropped, counted."""
    lengths = [prompt_length(tokenizer, q.text, style) for q in questions]
    kept = [q for q, n in zip(questions, lengths) if n < max_len]
    _report_fit("questions", len(questions), len(kept), max(lengths), max_len)
    return kept


def fit_pairs(pairs: list[Pair], style, tokenizer, max_len: int) -> tuple[list[Pair], list[dict]]:
    """Pairs (and their trl examples) whose prompt leaves room for an answer within MAX_SEQ_LENGTH; of those, the ones
    trl will cut (prompt + answer longer than MAX_SEQ_LENGTH: it keeps the start) counted and said."""
    examples = [to_dpo_example(p, style, tokenizer) for p in pairs]
    lengths = []
    for e in examples:
        ids, n_prompt = tokenize_example(tokenizer, {"prompt": e["prompt"], "completion": e["chosen"]})
        rejected = len(tokenize_example(tokenizer, {"prompt": e["prompt"], "completion": e["rejected"]})[0])
        lengths.append((n_prompt, len(ids), rejected))
    kept = [i for i, (n, _, _) in enumerate(lengths) if n < max_len]
    _report_fit("pairs", len(pairs), len(kept), max(n for n, _, _ in lengths), max_len)
    _report_cut([lengths[i] for i in kept], max_len)
    return [pairs[i] for i in kept], [examples[i] for i in kept]


def _report_cut(lengths: list[tuple[int, int, int]], max_len: int) -> None:
    """One line when trl's DPOTrainer will cut answers: how many pairs, by how much, what is lost."""
    chosen = [c - max_len for _, c, _ in lengths if c > max_len]
    rejected = [r - max_len for _, _, r in lengths if r > max_len]
    if not chosen and not rejected:
        return
    cut = sum(1 for _, c, r in lengths if max(c, r) > max_len)
    longest = max(max(c, r) for _, c, r in lengths)
    print(f"[preflight] {cut} of {len(lengths)} pairs are longer than MAX_SEQ_LENGTH={max_len} (by up to "
          f"{longest - max_len} tokens; {len(chosen)} chosen, {len(rejected)} rejected answers): trl's DPOTrainer "
          f"keeps their first {max_len} tokens, so DPO compares those answers without their end. Fix: "
          f"--MAX_SEQ_LENGTH={longest} keeps every pair whole.")


def _report_fit(what: str, total: int, kept: int, longest: int, max_len: int) -> None:
    if kept == total:
        return
    if not kept:
        raise UserError(f"every one of the {total} {what} has a prompt of MAX_SEQ_LENGTH={max_len} tokens or more "
                        f"(longest {longest}), so no answer token could be trained. Fix: "
                        f"--MAX_SEQ_LENGTH={longest + 512}, or shorter questions.")
    print(f"[preflight] dropped {total - kept} of {total} {what} whose prompt alone fills MAX_SEQ_LENGTH={max_len} "
          f"(longest {longest} tokens)")
