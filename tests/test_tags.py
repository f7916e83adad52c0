import pytest
from hypothesis import given, strategies as st

from medreason.evaluate.metrics import compliance_flags, rouge_l_scores, status_counts
from medreason.answers.prompts import PROMPT_STYLES, get_style
from medreason.answers.tags import MARKERS, TAGS, closing_marker, parse_answer, reasoning_closed_at, split_reasoning
from medreason.config.errors import UserError

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


# --- each style owns its parser, markers and card text ----------------------------------------------------------------
# These go through PROMPT_STYLES, so a style added without its parser, markers or card text fails here.

THINKING, RESPONSE = "Chest pain in an older adult: rule out a heart attack first.", "A 12-lead ECG."


@pytest.mark.parametrize("name", list(PROMPT_STYLES))
def test_each_style_reads_back_its_own_answer_through_the_style_object(name):
    style = get_style(name)
    answer = style.answer(THINKING, RESPONSE)
    parsed = style.parse(answer)
    assert (parsed.status, parsed.response) == ("complete", RESPONSE)
    assert parsed.thinking == (THINKING if style.reasoning else "")
    # the pipeline's functions, by name or by object, ask the same style (also one with another system prompt)
    for way in (name, style, style.with_system_prompt("Another prompt.")):
        assert parse_answer(answer, way) == parsed
        assert closing_marker(way) == style.closing_marker
        assert reasoning_closed_at(answer, way) == style.reasoning_closed_at(answer)
        assert split_reasoning(answer, way) == style.split_reasoning(answer)
    assert MARKERS[name] == style.markers
    # an answer without a closing marker of its own is whole only when the model ended its turn
    assert style.parse(answer, ended=False).complete == (style.closing_marker is not None)
    if style.closing_marker:
        assert answer.endswith(style.closing_marker)


@pytest.mark.parametrize("name", [name for name, style in PROMPT_STYLES.items() if style.reasoning])
def test_a_reasoning_style_writes_its_markers_in_order_and_its_reasoning_ends_where_the_answer_starts(name):
    style = get_style(name)
    answer = style.answer(THINKING, RESPONSE)
    positions = [answer.index(marker) for marker in style.markers]
    assert positions == sorted(positions)
    closed = style.reasoning_closed_at(answer)
    assert closed is not None and THINKING in answer[:closed] and RESPONSE not in answer[:closed]
    assert style.reasoning_closed_at(answer[:answer.index(style.reasoning_markers[1])]) is None
    assert style.split_reasoning(answer)[0::2] == (THINKING, True)
    assert RESPONSE in style.split_reasoning(answer)[1]
    # a reasoning cut by the thinking budget is closed in the style's own layout, and then reads as complete
    cut = answer[:answer.index(style.reasoning_markers[1])]
    assert style.reasoning_closed_at(cut + style.budget_closing) is not None
    forced = cut.rstrip() + style.budget_closing + RESPONSE + ("\n" + style.closing_marker if style.closing_marker else "")
    assert (style.parse(forced).status, style.parse(forced).response) == ("complete", RESPONSE)


def test_a_style_without_reasoning_is_all_answer():
    plain = get_style("plain")
    assert (plain.markers, plain.reasoning_markers, plain.budget_closing, plain.closing_marker) == ((), None, None, None)
    assert plain.split_reasoning("ECG.") == ("", "ECG.", True) and plain.reasoning_closed_at("</think> ECG.") is None


def test_r1_reasoning_may_have_been_opened_by_the_prompt():
    r1 = get_style("r1")
    assert r1.split_reasoning("steps\n</think>\n\nECG.") == ("steps", "ECG.", True)
    assert get_style("think_response").split_reasoning("steps\n</think>\n\nECG.") == ("", "steps\n</think>\n\nECG.",
                                                                                      False)


@pytest.mark.parametrize("name", list(PROMPT_STYLES))
def test_the_card_text_describes_the_styles_own_markers_and_no_other(name):
    style = get_style(name)
    assert style.card_text.strip().endswith(".") and len(style.card_text) > 40
    others = {marker for other in PROMPT_STYLES.values() for marker in other.markers} - set(style.markers)
    assert all(marker in style.card_text for marker in style.markers)
    assert not [marker for marker in others if marker in style.card_text]  # e.g. no <response> for r1
    if not style.reasoning:
        assert "no separate reasoning" in style.card_text


def test_an_unknown_style_name_is_refused_with_the_choices():
    with pytest.raises(UserError, match="PROMPT_STYLE='tagged'.*think_response, huatuo, r1, plain"):
        parse_answer("<think>a</think><response>b</response>", "tagged")
