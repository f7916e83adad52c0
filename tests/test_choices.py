import pytest

from medreason.answers.choices import extract_choice, mcq_question

OPTIONS = {"A": "Iron deficiency", "B": "Vitamin B12 deficiency", "C": "Thalassaemia",
           "D": "Anaemia of chronic disease"}


@pytest.mark.parametrize("answer, letter", [
    ("<think>microcytic, low ferritin</think>\n<response>The answer is A.</response>", "A"),
    ("<think>x</think><response>Answer: (C)</response>", "C"),
    ("The correct option is B", "B"),
    ("the answer is d", "D"),
    ("<think>not A, since ferritin is low... </think><response>C. Thalassaemia fits the picture</response>", "C"),
    ("<think>x</think><response>(B)</response>", "B"),
    ("B", "B"),
    ("<think>It could be A. But the answer is C.</think><response>The answer is C.</response>", "C"),
    ("I first thought the answer is A, but on reflection the answer is B.", "B"),
    ("<response>Thalassaemia trait explains the small cells.</response>", "C"),  # option text only
    ("The answer is A or B.", None),  # two letters: no choice
    ("The answer is A and C", None),
    ("It is hard to say without more tests.", None),  # no answer
    ("Both iron deficiency and thalassaemia cause small cells.", None),  # two options' text
    ("The answer is E.", None),  # not an option
    ("", None),
])
def test_extract_choice(answer, letter):
    assert extract_choice(answer, OPTIONS) == letter


def test_question_lists_the_options_and_the_instruction():
    text = mcq_question("Low MCV and low ferritin suggest?", OPTIONS)
    assert text.startswith("Low MCV and low ferritin suggest?") and "A. Iron deficiency\nB. Vitamin B12" in text
    assert text.rstrip().endswith("The answer is <letter>.")
