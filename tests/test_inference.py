"""inference.py and the parts behind it: loading, the answer-repair loop, batch mode, errors."""
import json
import subprocess
import sys

import pytest

from conftest import PARROT_ANSWERS, ROOT
from medreason.answers import answering
from medreason.model import for_inference
from medreason.answers.answering import _next_step
from medreason.config.errors import UserError
from medreason.answers.generation import generate
from medreason.answers.prompts import generation_prompt, get_style
from medreason.answers.tags import parse_answer

STYLE = get_style("think_response")
COMPLETE_Q, THINK_ONLY_Q = PARROT_ANSWERS


@pytest.mark.parametrize("text, hit_budget, step", [
    ("<think>still reasoning", True, "continue"),
    ("<think>still reasoning", False, None),  # stopped on its own inside <think>: nothing to continue
    ("<think>a</think>\n<response>half", True, "continue"),
    ("<think>a</think>\n", False, "open_response"),
    ("<think>a</think>\n", True, "continue"),  # cut off by the budget: the model may open <response> itself
    ("<think>a</think>\nan untagged answer", False, None),
    ("<think>a</think>\n<response>b</response>", False, None),
    ("no tags at all", True, None),
    ("<think>a</think><response>" + "The same sentence is written again. " * 12, True, None),  # looping: not continued
])
def test_next_step(text, hit_budget, step):
    assert _next_step(text, hit_budget, STYLE) == step


@pytest.mark.parametrize("style, text, hit_budget, step", [
    ("huatuo", "## Thinking\n\nstill reasoning", True, "continue"),
    ("huatuo", "## Thinking\n\nsteps\n\n## Final Response\n\nhalf an answ", True, "continue"),
    ("huatuo", "## Thinking\n\nsteps\n\n## Final Response\n\n", False, None),  # no opening to write for it
    ("huatuo", "## Thinking\n\nsteps\n\n## Final Response\n\nAn answer.", False, None),
    ("r1", "steps so far", True, "continue"),  # the R1 template's prompt opened <think>
    ("r1", "<think>\nsteps\n</think>\n\nThe answer, cut", True, "continue"),
    ("r1", "<think>\nsteps\n</think>\n\nThe answer.", False, None),
    ("plain", "An answer cut by the", True, "continue"),
    ("plain", "A whole answer.", False, None),
])
def test_next_step_in_every_style(style, text, hit_budget, step):
    assert _next_step(text, hit_budget, get_style(style)) == step


@pytest.fixture(scope="module")
def parrot(parrot_model_dir):
    return for_inference.load(str(parrot_model_dir))


def test_parrot_model_knows_its_answers(parrot):
    full, = answering.answer_batch(parrot.model, parrot.tokenizer, [COMPLETE_Q], STYLE, max_new_tokens=64)
    assert full.text == PARROT_ANSWERS[COMPLETE_Q] and full.status == "complete" and full.continuations == 0


def test_an_answer_cut_by_the_budget_is_continued_to_completion(parrot):
    answer, = answering.answer_batch(parrot.model, parrot.tokenizer, [COMPLETE_Q], STYLE, max_new_tokens=4,
                                     continuation_tokens=4, max_continuations=20)
    assert answer.status == "complete" and answer.continuations >= 3
    assert answer.response == "ACE inhibitors" and answer.thinking == "bradykinin builds up"
    assert not answer.opened_response


def test_what_stays_cut_off_is_reported_not_closed(parrot):
    answer, = answering.answer_batch(parrot.model, parrot.tokenizer, [COMPLETE_Q], STYLE, max_new_tokens=4,
                                     continuation_tokens=4, max_continuations=1)
    assert answer.continuations == 1 and answer.status == "think_unclosed"
    assert "</think>" not in answer.text and answer.tokens == 8


def test_a_missing_response_is_opened_and_the_model_continues(parrot):
    answer, = answering.answer_batch(parrot.model, parrot.tokenizer, [THINK_ONLY_Q], STYLE, max_new_tokens=64,
                                     continuation_tokens=16, max_continuations=1)
    assert answer.opened_response and answer.continuations == 1
    opened = PARROT_ANSWERS[THINK_ONLY_Q] + "\n<response>\n"
    # Everything after the opening tag we added is what the model itself writes from there: no tag of ours.
    prompt = generation_prompt(parrot.tokenizer, THINK_ONLY_Q, STYLE) + opened
    own, = generate(parrot.model, parrot.tokenizer, [prompt], max_new_tokens=16, batch_size=1, progress=False,
                    stop_text="</response>")
    assert answer.text == (opened + own.text).strip()
    assert answer.status == parse_answer(answer.text).status


def test_batch_answers_keep_question_order(parrot):
    answers = answering.answer_all(parrot.model, parrot.tokenizer, [THINK_ONLY_Q, COMPLETE_Q], STYLE,
                                   max_new_tokens=64, batch_size=2, max_continuations=0)
    assert [a.question for a in answers] == [THINK_ONLY_Q, COMPLETE_Q]
    assert answers[1].status == "complete" and answers[0].status == "response_missing"


def run_inference(*args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "inference.py"), *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


def test_batch_mode_end_to_end_on_a_trained_adapter(tiny_adapter, tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps({"question": q}) for q in ["What is anaemia?", "Why test TSH?",
                                                                          "What is gout?"]) + "\n")
    output = tmp_path / "answers.jsonl"
    result = run_inference("--adapter", str(tiny_adapter), "--input", str(questions), "--output", str(output),
                           "--max-new-tokens", "6", "--max-continuations", "1", "--continuation-tokens", "3",
                           "--engine", "batched")
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["question"] for r in rows] == ["What is anaemia?", "Why test TSH?", "What is gout?"]
    for row in rows:
        assert {"question", "thinking", "response", "status", "tokens", "seconds", "continuations"} <= set(row)
        assert 0 < row["tokens"] <= 9 and row["seconds"] > 0
    # Each row is the answer the library gives the same adapter, asked the same way: text, status, repairs.
    assert [without_time(r) for r in rows] == answers_in_process(tiny_adapter, [r["question"] for r in rows], 6,
                                                                 max_continuations=1, continuation_tokens=3)
    incomplete = sum(r["status"] != "complete" for r in rows)
    assert result.returncode == (3 if incomplete else 0), result.stdout[-2000:]
    assert f"{incomplete} incomplete" in result.stdout


def without_time(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "seconds"}


def answers_in_process(folder, questions, max_new_tokens, **options) -> list[dict]:
    """What answering.answer_all gives for these questions (greedy, batched generate, batch size 8, as inference.py
    does by default), as inference.py's rows less their timing."""
    loaded = for_inference.load(str(folder))
    return [without_time(a.as_row()) for a in answering.answer_all(
        loaded.model, loaded.tokenizer, questions, loaded.style, max_new_tokens, 8, engine="batched", **options)]


def test_a_merged_model_folder_is_answered_and_evaluated_as_its_adapter(tiny_adapter, tiny_model_dir, tmp_path):
    """SAVE_MERGED's folder (peft's merge_and_unload via the project's exporter) in inference.py and evaluate.py:
    the same answers as the adapter it came from, and evaluate.py says why it needs --no-base."""
    from medreason.model import exports
    merged = exports.merge_adapter(str(tiny_model_dir), tiny_adapter, tmp_path / "merged")
    assert not (merged / "adapter_config.json").exists() and (merged / "config.json").is_file()
    questions = tmp_path / "questions.jsonl"
    asked = ["What is anaemia?", "What is gout?"]
    questions.write_text("".join(json.dumps({"question": q}) + "\n" for q in asked))
    output = tmp_path / "answers.jsonl"
    result = run_inference("--adapter", str(merged), "--input", str(questions), "--output", str(output),
                           "--max-new-tokens", "8", "--max-continuations", "0", "--engine", "batched")
    assert result.returncode in (0, 3) and f"[load] model {merged}" in result.stdout, result.stdout[-2000:]
    rows = [without_time(json.loads(line)) for line in output.read_text().splitlines()]
    assert rows == answers_in_process(tiny_adapter, asked, 8, max_continuations=0)

    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps({"Question": q, "Complex_CoT": "c", "Response": "r"}) + "\n"
                                 for q in asked))
    evaluate = [sys.executable, str(ROOT / "evaluate.py"), "--adapter", str(merged), "--data", str(rows_file),
                "--max-new-tokens", "8", "--output", str(tmp_path / "evaluation")]
    refused = subprocess.run(evaluate, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=600)
    assert refused.returncode == 1 and f"error: {merged} is a merged model" in refused.stdout
    assert "Fix: pass the adapter folder, or --no-base." in refused.stdout
    scored = subprocess.run(evaluate + ["--no-base"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=600)
    assert scored.returncode == 0, scored.stdout[-3000:]
    saved = json.loads((tmp_path / "evaluation" / "results.json").read_text())
    assert "base" not in saved and saved["tuned"]["rouge_l"]["n"] == 2 and saved["tuned"]["perplexity"]["n"] == 2


def test_loading_errors_say_the_fix(tmp_path, tiny_adapter):
    with pytest.raises(UserError, match="no such folder.*outputs/<run>/adapter"):
        for_inference.load(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither an adapter .*adapter_config.json"):
        for_inference.load(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="could not be fetched from the Hugging Face Hub.*local adapter folder"):
        for_inference.load("nobody-here/no-such-adapter")
    with pytest.raises(UserError, match="does not fit the base model 'embedded'.*Fix: --base-model"):
        for_inference.load(str(tiny_adapter), base_model="embedded")


def test_unsloth_backend_answers_on_cpu(tiny_adapter, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"Question": "What is anaemia?"}) + "\n")
    output = tmp_path / "a.jsonl"
    result = run_inference("--adapter", str(tiny_adapter), "--backend", "unsloth", "--input", str(questions),
                           "--output", str(output), "--max-new-tokens", "5", "--max-continuations", "0")
    assert "via unsloth" in result.stdout and result.returncode in (0, 3), result.stdout[-2000:]
    row, = [json.loads(line) for line in output.read_text().splitlines()]
    assert row["question"] == "What is anaemia?" and 0 < row["tokens"] <= 5


def test_adapter_remembers_base_model_and_prompt(tiny_adapter, tiny_model_dir):
    info = json.loads((tiny_adapter / "training_info.json").read_text())
    loaded = for_inference.load(str(tiny_adapter))
    assert loaded.kind == "adapter" and loaded.base_model == str(tiny_model_dir) == info["model_name"]
    assert loaded.style.system_prompt == info["system_prompt"]
