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
                           "--max-new-tokens", "6", "--max-continuations", "1", "--continuation-tokens", "3")
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["question"] for r in rows] == ["What is anaemia?", "Why test TSH?", "What is gout?"]
    for row in rows:
        assert {"question", "thinking", "response", "status", "tokens", "seconds", "continuations"} <= set(row)
        assert row["status"] in {"complete", "think_unclosed", "response_missing", "response_unclosed", "no_tags",
                                 "malformed", "looping"}
        assert 0 < row["tokens"] <= 9 and row["seconds"] > 0
    incomplete = sum(r["status"] != "complete" for r in rows)
    assert result.returncode == (3 if incomplete else 0), result.stdout[-2000:]
    assert f"{incomplete} incomplete" in result.stdout


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
