"""The streaming splitter: an answer arriving piece by piece, split into reasoning and response at every moment."""
import pytest
from hypothesis import given, strategies as st

from medreason.answers.prompts import get_style
from medreason.answers.streaming import StreamSplitter, held_back, split
from medreason.answers.tags import parse_answer

ANSWER = "<think>\nbradykinin builds up\n</think>\n<response>\nACE inhibitors\n</response>"


def feed_all(pieces, style="think_response"):
    splitter = StreamSplitter(get_style(style))
    return [splitter.feed(piece) for piece in pieces]


def test_token_by_token_the_reasoning_opens_closes_and_the_response_follows():
    splits = feed_all(list(ANSWER))  # one character at a time: every tag is cut across pieces
    assert not splits[0].reasoning  # "<" alone may be anything: held back
    opened = next(i for i, s in enumerate(splits) if s.reasoning)
    assert "".join(ANSWER[:opened + 1]) == "<think>"  # the panel opens the moment "<think>" is whole
    closed = next(i for i, s in enumerate(splits) if s.reasoning_closed)
    assert ANSWER[:closed + 1].endswith("</think>")
    assert all(s.reasoning and not s.reasoning_closed for s in splits[opened:closed])
    last = splits[-1]
    assert (last.thinking, last.response, last.reasoning_closed) == ("bradykinin builds up", "ACE inhibitors", True)


def test_a_tag_cut_across_pieces_never_shows_as_text():
    splits = feed_all(["<th", "ink>\nbradykinin builds up\n</", "thi", "nk>\n<resp", "onse>\nACE inhib", "itors\n</res",
                       "ponse>"])
    for s in splits:
        assert "<" not in s.thinking + s.response and ">" not in s.thinking + s.response
    assert [s.reasoning_closed for s in splits] == [False, False, False, True, True, True, True]
    assert splits[3].response == "" and splits[4].response == "ACE inhib" and splits[5].response == "ACE inhibitors"
    assert splits[-1].status == "complete"


@given(st.lists(st.integers(min_value=1, max_value=len(ANSWER)), max_size=12))
def test_any_cut_of_the_answer_gives_a_prefix_of_the_final_parts(cuts):
    bounds = sorted({0, len(ANSWER), *cuts})
    splits = feed_all([ANSWER[a:b] for a, b in zip(bounds, bounds[1:])])
    for s in splits:  # what is shown only ever grows towards the final parts, never shows a tag fragment
        assert "bradykinin builds up".startswith(s.thinking) and "ACE inhibitors".startswith(s.response)
        assert s.status != "malformed"
    assert splits[-1].status == parse_answer(ANSWER).status == "complete"


def test_held_back_is_only_what_may_still_become_a_marker():
    tags = ("<think>", "</think>")
    assert held_back("abc </thi", tags) == 5
    assert held_back("abc <", tags) == 1
    assert held_back("a < b", tags) == 0  # "< b" can no longer become a tag
    assert held_back("done</think>", tags) == 0  # a whole tag is text for the parser, not a fragment
    assert held_back("", tags) == 0 and held_back("abc", ()) == 0


def test_untagged_text_is_a_response_without_a_reasoning_panel():
    s = feed_all(["Hello ", "there."])[-1]
    assert (s.reasoning, s.response, s.status) == (False, "Hello there.", "no_tags")


def test_text_before_the_reasoning_is_unreadable_and_shown_as_written():
    s = feed_all(["Sure! ", "<think>a</think>"])[-1]
    assert s.status == "malformed" and not s.reasoning and s.text == "Sure! <think>a</think>"


@pytest.mark.parametrize("style, pieces, thinking, response, closed", [
    # DeepSeek-R1: the prompt already opened <think>, so the first words are reasoning
    ("r1", ["first ", "reasoning\n</th", "ink>\n\nthe ", "answer"], "first reasoning", "the answer", True),
    ("r1", ["still ", "reasoning </"], "still reasoning", "", False),
    ("huatuo", ["## Thin", "king\n\nsteps\n\n## Final Resp", "onse\n\nDx"], "steps", "Dx", True),
    ("huatuo", ["## Thinking\n\nsteps\n\n## Fin"], "steps", "", False),
    ("plain", ["just ", "the answer"], "", "just the answer", False),
])
def test_each_prompt_style_splits_by_its_own_markers(style, pieces, thinking, response, closed):
    splits = feed_all(pieces, style)
    last = splits[-1]
    assert (last.thinking, last.response, last.reasoning_closed) == (thinking, response, closed)
    assert last.reasoning == (style != "plain")
    assert all("#" not in s.thinking + s.response and "</" not in s.thinking + s.response for s in splits)


def test_split_matches_the_parser_on_whole_text():
    for text in (ANSWER, "<think>a</think>\n<response>half", "<think>unfinished"):
        parsed, s = parse_answer(text, "think_response", ended=False), split(text, "think_response")
        assert (s.thinking, s.response, s.status) == (parsed.thinking, parsed.response, parsed.status)
