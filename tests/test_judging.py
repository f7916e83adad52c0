"""The judges: verdict parsing on crafted judge replies, the model-free judges, the format gate, an unreadable judge."""
import pytest

from medreason.config.errors import UserError
from medreason.evaluate.judging import (NO_RESPONSE, ChoiceJudge, ModelJudge, ReferenceJudge, Verdict, check_judge,
                                        judge_answers, load_judge, parse_verdict, probe, rubric_messages)
from medreason.preference.pairs import Question

COMPLETE = "<think>\nreasoning\n</think>\n<response>\n{}\n</response>"


@pytest.mark.parametrize("reply, score", [
    ("0.7", 0.7),
    ("Score: 0.7", 0.7),
    ("Score: 0.7/1", 0.7),
    ("Score: 7/10", 0.7),
    ("7/10", 0.7),
    ("4 out of 5", 0.8),
    ("**Score**: .85", 0.85),
    ("The score is 1", 1.0),
    ("Score: 0. The answer is wrong.", 0.0),
    ("Score: 70%", 0.7),
    ("I would rate it at 85% overall.", 0.85),
    ("Score: 0.9\nScore: 0.2", 0.9),  # the first labelled score counts
    ("The answer covers 2 of the 3 key points for a 45-year-old patient, so 0.6.", 0.6),  # only one value in 0..1
    ("On a scale from 0 to 1, I give it 0.8", 0.8),  # the echoed scale is not a score
    ("Score (0-1): 0.75", 0.75),
    ("It deserves 1.", 1.0),
])
def test_readable_verdicts(reply, score):
    assert parse_verdict(reply) == pytest.approx(score)


@pytest.mark.parametrize("reply", [
    "",
    "The answer is good.",  # no number at all
    "Somewhere between 0.6 and 0.8.",  # prose with two scores: ambiguous
    "Accuracy 0.9, completeness 0.5.",  # two criteria, no overall score
    "Score: 7",  # labelled but outside 0..1 (a 0-10 habit): not guessed
    "Score: 12/10",
    "Score: 150%",
    "8",  # a bare number outside 0..1
    "Score: high",
])
def test_unreadable_verdicts(reply):
    assert parse_verdict(reply) is None


def test_rubric_shows_the_reference_only_when_there_is_one():
    with_ref = rubric_messages("Q?", "my answer", "the reference")[1]["content"]
    without = rubric_messages("Q?", "my answer", None)[1]["content"]
    assert "the reference" in with_ref and "Reference answer" in with_ref and "key points of the reference" in with_ref
    assert "Reference answer" not in without and "my answer" in without
    assert all(word in with_ref for word in ("factual accuracy", "completeness", "key points", "Score:"))


def test_reference_judge_is_rouge_l_and_requires_the_format():
    question = Question("What causes scurvy?", "Vitamin C deficiency causes scurvy.")
    answers = [COMPLETE.format("Vitamin C deficiency causes scurvy."), COMPLETE.format("Too much iron."),
               COMPLETE.format("Vitamin C excess."),
               "<think>\nVitamin C deficiency causes scurvy.", "Vitamin C deficiency causes scurvy."]
    verdicts = judge_answers(ReferenceJudge(), [question] * 5, answers, [True, True, True, False, False])
    assert verdicts[0].score == pytest.approx(1.0)
    assert verdicts[1].score == 0.0  # no word in common with the reference
    # ROUGE-L F by hand: common subsequence "vitamin c" (2 words); precision 2/3, recall 2/5 -> F = 2PR / (P + R) = 0.5
    assert verdicts[2].score == pytest.approx(0.5)
    assert verdicts[3].score == 0.0 and verdicts[4].score == 0.0  # incomplete answers score 0 whatever they say
    assert "incomplete" in verdicts[4].said


def test_choice_judge_scores_the_extracted_letter():
    options = {"A": "Iron", "B": "Vitamin C", "C": "Zinc"}
    question = Question("Scurvy? Options…", "B. Vitamin C", options, "B")
    answers = [COMPLETE.format("The answer is B."), COMPLETE.format("The answer is A."),
               COMPLETE.format("A or B")]
    scores = [v.score for v in ChoiceJudge().score([question] * 3, answers)]
    assert scores == [1.0, 0.0, 0.0]


def test_judges_refuse_questions_they_cannot_score():
    plain = [Question("What causes scurvy?")]
    with pytest.raises(UserError, match="JUDGE='reference'.*1 of 1 questions have none"):
        check_judge("reference", plain, "embedded")
    with pytest.raises(UserError, match="JUDGE='choice'.*no options"):
        check_judge("choice", plain, "embedded")
    with pytest.raises(UserError, match="JUDGE='rouge'"):
        check_judge("rouge", plain, "embedded")
    with pytest.raises(UserError, match="JUDGE_MODEL='/no/such/judge' cannot be loaded.*Fix:"):
        check_judge("model", plain, "/no/such/judge")


def test_a_judge_that_never_writes_a_score_stops_the_run_before_the_candidates(tiny_model_dir, tokenizer):
    """The tiny random Llama as the judge: a real model whose replies hold no score."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    judge = ModelJudge(model, tokenizer, str(tiny_model_dir), max_new_tokens=8)
    questions = [Question("What causes scurvy?", "Vitamin C deficiency."), Question("Dry cough drug?", "ACE-i.")]
    verdicts = judge.score(questions, ["Vitamin C deficiency.", "ACE inhibitors."])
    assert all(isinstance(v, Verdict) and not v.readable and v.said.startswith("Score:") for v in verdicts)
    with pytest.raises(UserError, match=r"gave no readable score in 2 verdicts to probe questions.*Fix: a larger"):
        probe(judge, questions)


def test_the_model_judge_reads_a_real_reply(embedded_dir, tokenizer):
    """The embedded model, asked the rubric with the reply opened by "Score:", writes something parse_verdict reads
    (a weak judge, but a readable one: the demo depends on it)."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(embedded_dir).eval()
    judge = ModelJudge(model, tokenizer, "embedded", max_new_tokens=8)
    question = Question("What vitamin deficiency causes scurvy?", "Vitamin C deficiency.")
    verdicts = judge.score([question, question], ["Vitamin C deficiency causes scurvy.", "It is caused by bananas."])
    assert any(v.readable for v in verdicts), [v.said for v in verdicts]
    assert all(0.0 <= v.score <= 1.0 for v in verdicts if v.readable)


REASONING = "ZEBRA-7731 hidden chain of thought that favours this answer"  # what the judge must never be shown


@pytest.mark.parametrize("style, answer", [
    ("think_response", "<think>\n{r}\n</think>\n<response>\n{a}\n</response>"),
    ("huatuo", "## Thinking\n\n{r}\n\n## Final Response\n\n{a}"),
    ("r1", "<think>\n{r}\n</think>\n\n{a}"),
])
def test_the_model_judge_sees_the_response_not_the_reasoning(tiny_model_dir, tokenizer, monkeypatch, style, answer):
    """The prompts the judge model is given (captured on their way into the generation engine, which still runs):
    the candidate's response is in them, its reasoning is not, in each reasoning style. An answer with no response
    (cut off in its reasoning) scores 0 without being shown, as an answer out of format does."""
    from transformers import AutoModelForCausalLM

    from medreason.answers import generation
    from medreason.evaluate import judging
    asked = []
    real_generate = generation.generate
    monkeypatch.setattr(judging, "generate", lambda model, tok, texts, *a, **k: asked.extend(texts) or
                        real_generate(model, tok, texts, *a, **k))  # the engine as the judge module calls it
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    judge = ModelJudge(model, tokenizer, "tiny", max_new_tokens=2, style=style)
    question = Question("What causes scurvy?", "Vitamin C deficiency.")
    whole = answer.format(r=REASONING, a="Vitamin C deficiency causes scurvy.")
    cut_off = "<think>\n" + REASONING if style != "huatuo" else "## Thinking\n\n" + REASONING
    verdicts = judge_answers(judge, [question] * 2, [whole, cut_off], [True, True])
    assert len(asked) == 1 and "Vitamin C deficiency causes scurvy." in asked[0]
    assert "ZEBRA-7731" not in asked[0] and "Thinking" not in asked[0] and "<think>" not in asked[0]
    assert verdicts[1] == Verdict(0.0, NO_RESPONSE)


def test_the_run_s_judge_parses_answers_in_the_run_s_style(tiny_model_dir, tokenizer):
    """load_judge hands the run's style to the model judge (a policy-sharing judge, as in the demo)."""
    import types

    from medreason.answers.prompts import get_style
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    cfg = types.SimpleNamespace(JUDGE="model", JUDGE_MODEL=str(tiny_model_dir), JUDGE_SAMPLES=1,
                                JUDGE_MAX_NEW_TOKENS=2, EVAL_BATCH_SIZE=2, JUDGE_TEMPERATURE=1.0, SEED=0)
    style = get_style("huatuo")
    judge = load_judge(cfg, None, style, model, tokenizer, str(tiny_model_dir))
    assert isinstance(judge, ModelJudge) and judge.disable_adapter and judge.style is style
