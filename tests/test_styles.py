"""Prompt styles (answer layouts) and data layouts: each style round-trips through its parser and trains only its
answer; each data layout loads, validates and is refused with the fix when broken or unfit for the style."""
import json

import pytest
from datasets import Dataset
from safetensors.torch import load_file

from conftest import run_script
from medreason.data import layouts, readers
from medreason.train import preflight, sft
from medreason.config.errors import UserError
from medreason.model.for_training import load_for_training
from medreason.answers.prompts import PROMPT_STYLES, generation_prompt, get_style, to_example, tokenize_example
from medreason.answers.tags import parse_answer
from test_script import check_metrics_match_samples
from test_training import CPU_PLAN, settings

ROW = {"Question": "A 60-year-old has crushing chest pain. First test?",
       "Complex_CoT": "Chest pain in an older adult: rule out a heart attack first.",
       "Response": "A 12-lead ECG within ten minutes."}
END_OF_TURN = "<|im_end|>"


@pytest.mark.parametrize("name", list(PROMPT_STYLES))
def test_each_style_parses_back_what_it_writes_and_a_cut_answer_is_not_complete(name):
    style = get_style(name)
    answer = style.answer(ROW["Complex_CoT"], ROW["Response"])
    parsed = parse_answer(answer, style)
    assert parsed.status == "complete" and parsed.response == ROW["Response"]
    assert parsed.thinking == (ROW["Complex_CoT"] if style.reasoning else "")
    assert parse_answer(answer, style, ended=False).status != "complete" or name == "think_response"
    for cut in range(1, len(answer) - len(ROW["Response"]) // 2, 7):  # cut anywhere before the answer ends
        assert parse_answer(answer[:cut], style, ended=False).status != "complete"


@pytest.mark.parametrize("name, text, status", [
    ("huatuo", "## Thinking\n\nsteps\n\n## Final Response\n\nECG.", "complete"),
    ("huatuo", "## Thinking\n\nsteps still going", "think_unclosed"),
    ("huatuo", "## Final Response\n\nECG.", "malformed"),
    ("huatuo", "ECG, no headings.", "no_tags"),
    ("r1", "steps\n</think>\n\nECG.", "complete"),  # the R1 template's prompt opened <think>
    ("r1", "<think>\nsteps\n</think>\n\nECG.", "complete"),
    ("r1", "<think>\nsteps\n</think>\n\n", "response_missing"),
    ("r1", "<think>a</think>b<think>c</think>d", "malformed"),
    ("plain", "ECG.", "complete"),
    ("plain", "  ", "response_missing"),
])
def test_style_statuses(name, text, status):
    assert parse_answer(text, name).status == status


@pytest.mark.parametrize("name", list(PROMPT_STYLES))
def test_only_the_answer_is_trained_in_every_style(name, tiny_model_dir, demo_rows, tmp_path):
    style = get_style(name)
    cfg = settings(tmp_path, MAX_STEPS=1, VAL_SIZE=0, EVAL_STEPS=0)
    model, tokenizer = load_for_training(cfg, CPU_PLAN, str(tiny_model_dir))
    rows = demo_rows[:3]
    examples = Dataset.from_list([to_example(row, style, tokenizer) for row in rows])
    trainer = sft.build_trainer(model, tokenizer, examples, None,
                                     sft.build_sft_config(cfg, CPU_PLAN, [], tmp_path / "checkpoints"))
    for row, example, ours in zip(rows, trainer.train_dataset, examples):
        ids, labels = example["input_ids"], example["labels"]
        first = next(i for i, label in enumerate(labels) if label != -100)
        assert labels[first:] == ids[first:] and set(labels[:first]) == {-100}
        assert tokenizer.decode(ids[:first]) == generation_prompt(tokenizer, row["Question"], style)
        trained = tokenizer.decode(ids[first:]).rstrip("\n")
        assert trained == style.answer(row["Complex_CoT"], row["Response"]) + END_OF_TURN
        assert tokenize_example(tokenizer, ours) == (ids, first)  # the preflight counts what trl trains


R1_LIKE_TEMPLATE = (  # what DeepSeek-R1-Distill templates do: drop the reasoning of assistant turns, open <think>
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|User|>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{% set content = m['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}{{ '<|Assistant|>' + content + eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|Assistant|><think>\\n' }}{% endif %}")


@pytest.fixture
def r1_tokenizer(tokenizer):
    import copy
    r1 = copy.deepcopy(tokenizer)
    r1.chat_template = R1_LIKE_TEMPLATE
    return r1


def test_r1_style_trains_the_reasoning_an_r1_template_would_drop(r1_tokenizer):
    style = get_style("r1")
    example = to_example(ROW, style, r1_tokenizer)
    assert example["prompt"].endswith("<|Assistant|><think>\n") and ROW["Question"] in example["prompt"]
    assert example["completion"] == f"{ROW['Complex_CoT']}\n</think>\n\n{ROW['Response']}"  # <think> is the prompt's
    ids, n_prompt = tokenize_example(r1_tokenizer, example)
    assert r1_tokenizer.decode(ids[n_prompt:], skip_special_tokens=True).startswith(ROW["Complex_CoT"])
    preflight.check_template_keeps_answer(example, r1_tokenizer)  # nothing dropped: no error


def test_a_conversational_style_on_an_r1_template_is_refused_with_the_fix(r1_tokenizer):
    example = to_example(ROW, get_style("think_response"), r1_tokenizer)
    with pytest.raises(UserError, match="changes the answer it is trained on.*Fix: --PROMPT_STYLE=r1"):
        preflight.check_template_keeps_answer(example, r1_tokenizer)


# --- data layouts -------------------------------------------------------------------------------------------------

def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_instruction_and_chat_layouts_load_as_rows(tmp_path):
    instruction = write_jsonl(tmp_path / "ins.jsonl", [
        {"instruction": "Name the first test.", "input": "Crushing chest pain, age 60.", "response": "An ECG."},
        {"instruction": "Name a cause of dry cough.", "output": "ACE inhibitors."}])
    rows, dropped = readers.validate(readers.load_records(instruction), instruction)
    assert rows == [{"Question": "Name the first test.\n\nCrushing chest pain, age 60.", "Complex_CoT": "",
                     "Response": "An ECG."},
                    {"Question": "Name a cause of dry cough.", "Complex_CoT": "", "Response": "ACE inhibitors."}]
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "First test?"}, {"role": "assistant", "content": "An ECG."}]}])
    assert readers.validate(readers.load_records(chat), chat)[0] == [
        {"Question": "First test?", "Complex_CoT": "", "Response": "An ECG."}]
    assert layouts.detect(readers.load_records(chat), chat) == layouts.MESSAGES


@pytest.mark.parametrize("rows, message", [
    ([{"instruction": "q", "response": ""}], r"no usable rows .*instruction, response .*instruction rows"),
    ([{"instruction": 3, "response": "a"}], r"no usable rows"),
    ([{"messages": "hello"}], r"messages is .*not a list"),
    ([{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}],
     r"one user turn then one assistant turn"),
    ([{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"}]}], r"its own system message"),
    ([{"prompt": "q", "answer": "a"}], r"field 'Question', 'Complex_CoT', 'Response' is missing.*instruction/response"),
])
def test_broken_layouts_are_refused_with_the_reason(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(UserError, match=message):
        readers.validate(readers.load_records(path), path)


def test_rows_without_reasoning_need_a_style_without_reasoning(tmp_path):
    plain_answers = [{"Question": "q", "Complex_CoT": "", "Response": "An ECG."}]
    with pytest.raises(UserError, match=r"row 1 has no reasoning for PROMPT_STYLE='think_response'.*"
                                        r"Fix: --PROMPT_STYLE=plain"):
        readers.fit_rows_to_style(plain_answers, get_style("think_response"), "rows.jsonl")
    assert readers.fit_rows_to_style(plain_answers, get_style("plain"), "rows.jsonl") == plain_answers
    # Answers already written in the style's layout are split by its parser.
    laid_out = [{"Question": "q", "Complex_CoT": "", "Response": "## Thinking\n\nsteps\n\n## Final Response\n\nECG."}]
    assert readers.fit_rows_to_style(laid_out, get_style("huatuo"), "rows.jsonl") == [
        {"Question": "q", "Complex_CoT": "steps", "Response": "ECG."}]


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(PROMPT_STYLES))
def test_each_style_trains_and_evaluates_end_to_end_on_the_embedded_model(name, tmp_path):
    out = tmp_path / "run"
    result = run_script("--MODEL_NAME=embedded", "--DATASET=demo", f"--PROMPT_STYLE={name}", "--MAX_STEPS=2",
                        "--GRAD_ACCUM=1", "--VAL_SIZE=2", "--EVAL_STEPS=2", "--SAVE_STEPS=2", "--EVAL_SAMPLES=2",
                        "--MAX_NEW_TOKENS=16", "--MAX_SEQ_LENGTH=512", "--REPORT_TO=none", "--BACKEND=transformers",
                        f"--OUTPUT_DIR={out}", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
    info = json.loads((out / "adapter" / "training_info.json").read_text())
    assert info["prompt_style"] == name and info["system_prompt"] == get_style(name).system_prompt
    # Trained: LoRA B matrices start at zero, so non-zero ones show the optimizer moved the adapter.
    lora_b = {k: v for k, v in load_file(out / "adapter" / "adapter_model.safetensors").items() if "lora_B" in k}
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values())
    # Evaluated in this style: each answer parsed by its parser, and the figures are those of these answers.
    assert len(check_metrics_match_samples(out, name)) == 2
