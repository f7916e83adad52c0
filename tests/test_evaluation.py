"""Base vs tuned evaluation: perplexity, bootstrap intervals, the comparison, the report, evaluate.py."""
import json
import math
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from medreason.answers.choices import extract_choice
from medreason.evaluate import comparison, report
from medreason.config.errors import UserError
from medreason.answers.prompts import get_style, to_conversation, tokenize_example

STYLE = get_style("think_response")
MEDMCQA = ROOT.parent / "shared" / "data" / "medmcqa_dev.jsonl"


@pytest.fixture(scope="module")
def tiny_lora(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).eval()


def direct_answer_nll(model, tokenizer, row):
    ids, n_prompt = tokenize_example(tokenizer, to_conversation(row, STYLE))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    log_probs = torch.log_softmax(logits[:-1], dim=-1)
    targets = torch.tensor(ids[1:])
    per_token = -log_probs[torch.arange(len(targets)), targets]
    return float(per_token[n_prompt - 1:].sum()), len(ids) - n_prompt


def test_answer_perplexity_matches_a_direct_computation(tiny_lora, tokenizer, demo_rows):
    rows = [demo_rows[0], demo_rows[5]]  # different lengths: the batch is padded
    batched = comparison.answer_nll(tiny_lora, tokenizer, rows, STYLE, batch_size=2)
    for (nll, count), row in zip(batched, rows):
        expected_nll, expected_count = direct_answer_nll(tiny_lora, tokenizer, row)
        assert count == expected_count and nll == pytest.approx(expected_nll, rel=1e-4)
    metric = comparison.perplexity_metric(batched)
    assert metric["value"] == pytest.approx(math.exp(sum(n for n, _ in batched) / sum(c for _, c in batched)))
    assert metric["ci95"][0] <= metric["value"] <= metric["ci95"][1] and metric["n"] == 2


def test_answer_perplexity_sends_only_answer_positions_through_the_output_layer(tiny_lora, tokenizer, demo_rows):
    rows = [demo_rows[0], demo_rows[5]]
    seen = []
    hook = tiny_lora.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(out.shape))
    try:
        counts = [count for _, count in comparison.answer_nll(tiny_lora, tokenizer, rows, STYLE, batch_size=2)]
    finally:
        hook.remove()
    # One (answer tokens x vocab) block per row, never (batch x padded length x vocab) for the whole batch.
    assert [shape[0] for shape in seen] == counts and all(len(shape) == 2 for shape in seen)


def test_bootstrap_interval():
    values = [1.0] * 30 + [0.0] * 70
    metric = comparison.mean_metric(values, seed=1)
    assert metric["value"] == pytest.approx(0.3) and metric["n"] == 100
    lo, hi = metric["ci95"]
    assert 0.18 < lo < 0.3 < hi < 0.42  # about ±0.09 for a proportion of 0.3 at n = 100
    assert comparison.mean_metric(values, seed=1)["ci95"] == [lo, hi]  # seeded
    assert comparison.mean_metric([1.0] * 5)["ci95"] == [1.0, 1.0]


def test_base_and_tuned_match_with_a_zero_adapter_and_differ_otherwise(tiny_lora, tokenizer, demo_rows):
    rows = demo_rows[:3]
    same = comparison.compare(tiny_lora, tokenizer, rows, "reasoning", STYLE, max_new_tokens=6, batch_size=3)
    assert same["base"].answers == same["tuned"].answers  # LoRA B starts at zero: the adapter changes nothing
    assert same["base"].metrics["perplexity"]["value"] == pytest.approx(same["tuned"].metrics["perplexity"]["value"])
    with torch.no_grad():
        for name, param in tiny_lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    differ = comparison.compare(tiny_lora, tokenizer, rows, "reasoning", STYLE, max_new_tokens=6, batch_size=3)
    assert differ["base"].metrics["perplexity"]["value"] == pytest.approx(same["base"].metrics["perplexity"]["value"])
    tuned, base = (differ[m].metrics["perplexity"]["value"] for m in ("tuned", "base"))
    assert tuned != pytest.approx(base)
    with torch.no_grad():  # leave the module fixture as it was
        for name, param in tiny_lora.named_parameters():
            if "lora_B" in name:
                param.zero_()


def test_report_files_are_written_and_readable(tiny_lora, tokenizer, demo_rows, tmp_path):
    rows = demo_rows[:2]
    results = comparison.compare(tiny_lora, tokenizer, rows, "reasoning", STYLE, max_new_tokens=4, batch_size=2)
    history = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.1}, {"step": 2, "eval_loss": 2.3}]
    files = report.write_report(tmp_path, results, rows, "reasoning", {"data": "demo"}, history)
    saved = json.loads(files["results"].read_text())
    for model in ("base", "tuned"):
        for name in ("rouge_l", "format_compliance", "perplexity"):
            metric = saved[model][name]
            assert set(metric) == {"value", "ci95", "n"} and metric["n"] == 2 and len(metric["ci95"]) == 2
    assert saved["difference"]["perplexity"] == pytest.approx(
        saved["tuned"]["perplexity"]["value"] - saved["base"]["perplexity"]["value"])
    text = files["report"].read_text()
    assert "| metric | base | tuned | difference |" in text and "| perplexity |" in text
    assert rows[0]["Question"] in text
    for png in (files["metrics_chart"], files["loss_curve"]):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_are_recognised_by_their_fields():
    assert comparison.detect_kind([{"Question": "", "Complex_CoT": "", "Response": ""}], "f") == "reasoning"
    assert comparison.detect_kind([{"question": "", "options": {}, "answer": "A"}], "f") == "mcq"
    with pytest.raises(UserError, match="rows have fields prompt, text. Fix"):
        comparison.detect_kind([{"prompt": "", "text": ""}], "f")
    with pytest.raises(UserError, match="row 2 needs 'options'"):
        comparison.validate_mcq([{"question": "q", "options": {"A": "x"}, "answer": "A"},
                                 {"question": "q", "options": {"A": "x"}, "answer": "B"}], "f")


def test_evaluate_script_on_a_medmcqa_slice(tiny_adapter, tmp_path):
    if not MEDMCQA.is_file():
        pytest.skip(f"MedMCQA rows not found at {MEDMCQA}")
    out = tmp_path / "medmcqa"
    result = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--adapter", str(tiny_adapter), "--data",
                             str(MEDMCQA), "--limit", "3", "--max-new-tokens", "6", "--output", str(out)],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    saved = json.loads((out / "results.json").read_text())
    assert saved["kind"] == "mcq"
    # The report shows all 3 answers of each model: the accuracy and extraction rate are those of these answers,
    # each letter taken by the project's extractor and checked against the row's answer.
    options = {row["question"]: row["options"] for row in map(json.loads, MEDMCQA.read_text().splitlines())}
    shown = report_answers((out / "report.md").read_text())
    assert len(shown) == 3
    for model in ("base", "tuned"):
        assert {"accuracy", "extraction_rate", "format_compliance"} <= set(saved[model])
        letters = [extract_choice(answers[model], options[question], STYLE) for question, _, answers in shown]
        assert saved[model]["accuracy"]["n"] == 3
        assert saved[model]["accuracy"]["value"] == pytest.approx(
            sum(letter == right for letter, (_, right, _) in zip(letters, shown)) / 3)
        assert saved[model]["extraction_rate"]["value"] == pytest.approx(sum(x is not None for x in letters) / 3)


def report_answers(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """(question, correct letter, {model: answer}) of each example in report.md's side-by-side section."""
    examples = []
    for block in text.split("### Example ")[1:]:
        question = re.search(r"\*\*Question:\*\* (.*)", block).group(1)
        right = re.search(r"\*\*Reference:\*\* ([A-Z])\.", block).group(1)
        answers = dict(re.findall(r"\*\*(Base|Tuned):\*\*\n\n```text\n(.*?)\n```", block, re.S))
        examples.append((question, right, {name.lower(): answer for name, answer in answers.items()}))
    return examples


def test_evaluate_script_says_where_the_rows_are_missing(tiny_adapter):
    result = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--adapter", str(tiny_adapter)],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert result.returncode != 0 and "error: no rows to evaluate" in result.stdout and "--data" in result.stdout
