import pytest
from hypothesis import given, strategies as st

from medreason.evaluate.metrics import compliance_flags, rouge_l_scores, status_counts
from medreason.answers.prompts import get_style
from medreason.answers.tags import TAGS, parse_answer

STYLE = get_style("think_response")


@pytest.mark.parametrize("text, status, thinking, response", [
    ("<think>a</think>\n<response>b</response>", "complete", "a", "b"),
    ("  <think>\nsteps\n</think>\n\n<response>\nDx\n</response>\n", "complete", "steps", "Dx"),
    ("<think>a</think><response>b</response> and trailing words", "complete", "a", "b"),
    ("<think>ran out of tok", "think_unclosed", "ran out of tok", ""),
    ("<think>a</think>", "response_missing", "a", ""),
    ("<think>a</think>\nplain answer", "response_missing", "a", ""),
    ("<think>a</think><response>half an ans", "response_unclosed", "a", "half an ans"),
    ("just an answer", "no_tags", "", "just an answer"),
    ("<response>b</response>", "malformed", "", ""),
    ("Sure! <think>a</think><response>b</response>", "malformed", "", ""),
    ("<think></think><response></response>", "malformed", "", ""),
    ("<think>a</think><response>b</response><think>again", "malformed", "a", "b"),
    ("<think><think><response></response>", "malformed", "", ""),
    ("<think>a</think>x<response>b</response>", "malformed", "a", ""),
    ("<think>a</think><response>b<think>c</response>", "malformed", "a", ""),
])
def test_statuses(text, status, thinking, response):
    parsed = parse_answer(text)
    assert (parsed.status, parsed.thinking, parsed.response) == (status, thinking, response)


plain_text = st.text(min_size=1).filter(lambda s: s.strip() and not any(t in s for t in TAGS))


@given(plain_text, plain_text)
def test_the_training_answer_format_parses_back_complete(thinking, response):
    parsed = parse_answer(STYLE.answer(thinking, response))
    assert parsed.status == "complete"
    assert parsed.thinking == thinking.strip() and parsed.response == response.strip()


@given(plain_text, plain_text, st.data())
def test_a_cut_off_answer_is_never_complete(thinking, response, data):
    answer = STYLE.answer(thinking, response)
    cut = data.draw(st.integers(min_value=0, max_value=answer.rindex("</response>") + len("</response>") - 1))
    assert parse_answer(answer[:cut]).status != "complete"


def test_scores_use_the_response_part_and_count_statuses():
    reference = "Iron deficiency anaemia from heavy periods"
    good = STYLE.answer("long reasoning that shares no words", reference)
    answers = [good, "<think>unfinished", reference]
    assert compliance_flags(answers) == [1.0, 0.0, 0.0]
    assert status_counts(answers) == {"complete": 1, "no_tags": 1, "think_unclosed": 1}
    # the tagged answer is scored on its response only; an untagged one on its whole text
    assert rouge_l_scores(answers, [reference] * 3) == pytest.approx([1.0, 0.0, 1.0])
