"""Exam benchmarks (#22): field mappings, both scorers, the thinking budget, contamination, model-index, evaluate.py."""
import pytest

from medreason.evaluate import contamination

QUESTION = ("A 45-year-old man presents with crushing chest pain radiating to the left arm and diaphoresis for two "
            "hours. His ECG shows ST elevation in leads II, III and aVF. What is the most appropriate next step?")


def test_contamination_finds_a_planted_64_character_overlap_and_ignores_a_40_character_one():
    planted = "Background. " + QUESTION[20:20 + 64] + " then something else entirely."
    near = "Background. " + QUESTION[20:20 + 40] + " then something else entirely."
    found = contamination.overlaps([near, planted, "unrelated"], ["An unrelated reference question.", QUESTION])
    assert [(o.train_index, o.reference_index) for o in found] == [(1, 1)]
    assert found[0].snippet.startswith(contamination.normalize(QUESTION[20:40]))
    # Line breaks and capitals do not hide a copy; a shorter threshold finds the 40-character one too.
    assert contamination.contaminated_rows([planted.upper().replace(" ", "\n")], [QUESTION]) == {0}
    assert contamination.contaminated_rows([near], [QUESTION], chars=40) == {0}
    assert "1 training row(s)" in contamination.summary(found, "MedQA test")


# --- field mappings, on records with each dataset's own field names (checked against its card) ----------------------

def test_each_benchmark_maps_its_own_fields_to_question_options_answer():
    from medreason.evaluate.benchmarks import BENCHMARKS, to_rows
    medqa = {"question": "A 23-year-old woman ...?", "answer": "Nitrofurantoin", "meta_info": "step1",
             "answer_idx": "D", "options": {"A": "Ampicillin", "B": "Ceftriaxone", "C": "Doxycycline",
                                            "D": "Nitrofurantoin"}, "metamap_phrases": ["woman"]}
    medmcqa = {"id": "e9ad821a", "question": "Which vitamin is supplied from only animal source:", "opa": "Vitamin C",
               "opb": "Vitamin B7", "opc": "Vitamin B12", "opd": "Vitamin D", "cop": 2, "choice_type": "single",
               "exp": "...", "subject_name": "Biochemistry", "topic_name": "Vitamins"}
    pubmedqa = {"pubid": 21645374, "question": "Do mitochondria play a role in remodelling lace plant leaves?",
                "context": {"contexts": ["Programmed cell death (PCD) is ...", "The following stages ..."],
                            "labels": ["BACKGROUND", "RESULTS"], "meshes": ["Alismataceae"],
                            "reasoning_required_pred": ["yes"], "reasoning_free_pred": ["yes"]},
                "long_answer": "Results depicted mitochondrial dynamics ...", "final_decision": "maybe"}
    mmlu = {"question_id": 7001, "question": "Which of these is a symptom of ...?", "options": list("abcdefghij"),
            "answer": "F", "answer_index": 5, "cot_content": "", "category": "health", "src": "ori_mmlu-nutrition"}
    law = {**mmlu, "question_id": 1, "category": "law"}
    assert to_rows([medqa], BENCHMARKS["medqa"])[0] == [{"question": medqa["question"], "options": medqa["options"],
                                                        "answer": "D"}]
    row, = to_rows([medmcqa], BENCHMARKS["medmcqa"])[0]
    assert row["options"] == {"A": "Vitamin C", "B": "Vitamin B7", "C": "Vitamin B12", "D": "Vitamin D"}
    assert row["answer"] == "C"  # cop is 0-based: 2 = c
    row, = to_rows([pubmedqa], BENCHMARKS["pubmedqa"])[0]
    assert row["options"] == {"A": "yes", "B": "no", "C": "maybe"} and row["answer"] == "C"
    assert row["question"].startswith("Context: Programmed cell death") and row["question"].endswith(
        "Question: Do mitochondria play a role in remodelling lace plant leaves?")
    rows, skipped = to_rows([mmlu, law], BENCHMARKS["mmlu-pro-health"])
    assert len(rows) == 1 and len(rows[0]["options"]) == 10 and rows[0]["answer"] == "F" and skipped == 0
    # A record without a usable answer is skipped and counted, not guessed.
    assert to_rows([{**medmcqa, "cop": None}], BENCHMARKS["medmcqa"]) == ([], 1)
    assert all(b.references and all(r.source for r in b.references) for b in BENCHMARKS.values())


def test_a_users_yaml_benchmark_and_a_local_file_load(tmp_path):
    import json
    from medreason.evaluate import benchmarks
    rows = [{"stem": f"Question {i}?", "a": "one", "b": "two", "c": "three", "key": i % 3} for i in range(6)]
    (tmp_path / "exam.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "mine.yaml").write_text("dataset: exam.jsonl\nquestion: stem\noptions: [a, b, c]\nanswer: key\n"
                                        "answer_format: index\nreferences:\n  - {model: X, accuracy: 50.0, "
                                        "source: my paper}\n")
    bench, = benchmarks.resolve(str(tmp_path / "mine.yaml"))
    loaded = benchmarks.load(bench)
    assert bench.name == "mine" and loaded[4] == {"question": "Question 4?", "answer": "B",
                                                  "options": {"A": "one", "B": "two", "C": "three"}}
    ours = tmp_path / "ours.jsonl"
    ours.write_text("\n".join(json.dumps(r) for r in loaded) + "\n")
    assert benchmarks.load(benchmarks.resolve(str(ours))[0]) == loaded
    assert benchmarks.resolve("example")[0].name == "example"  # configs/benchmarks/example.yaml
    with pytest.raises(Exception, match="unknown keys colour"):
        (tmp_path / "bad.yaml").write_text("dataset: exam.jsonl\ncolour: red\n")
        benchmarks.resolve(str(tmp_path / "bad.yaml"))
    with pytest.raises(Exception, match="not known. Fix: one of medqa"):
        benchmarks.resolve("medqa,usmle")


def test_offline_without_a_cached_copy_is_one_line_naming_the_id_and_how_to_get_it(monkeypatch, tmp_path):
    from medreason.evaluate import benchmarks
    from medreason.config.errors import UserError
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    with pytest.raises(UserError) as caught:
        benchmarks.load(benchmarks.BENCHMARKS["medqa"])
    message = str(caught.value)
    assert "\n" not in message and "GBaker/MedQA-USMLE-4-options" in message
    assert "load_dataset('GBaker/MedQA-USMLE-4-options', split='test')" in message and "--data" in message


def test_limit_takes_a_seeded_sample_stratified_by_the_correct_letter():
    from medreason.evaluate.benchmarks import stratified_sample
    rows = [{"question": str(i), "options": {"A": "a", "B": "b"}, "answer": "A" if i < 80 else "B"}
            for i in range(100)]
    sample = stratified_sample(rows, 10, seed=1)
    assert len(sample) == 10 and sum(r["answer"] == "B" for r in sample) == 2
    assert sample == stratified_sample(rows, 10, seed=1) != stratified_sample(rows, 10, seed=2)
    assert stratified_sample(rows, 0, seed=1) == rows


# --- the two scorers, on hand-written answers ------------------------------------------------------------------------

OPTIONS = {"A": "Aspirin", "B": "Heparin", "C": "Alteplase", "D": "Percutaneous coronary intervention"}


def test_strict_takes_the_last_explicit_answer_and_refuses_a_hedge():
    from medreason.answers.choices import extract_choice
    assert extract_choice("<think>\nmaybe the answer is A\n</think>\n<response>\nThe answer is C.\n</response>",
                          OPTIONS) == "C"
    assert extract_choice("The answer is A. On reflection, the answer is D.", OPTIONS) == "D"
    assert extract_choice("The answer is A or B.", OPTIONS) is None
    assert extract_choice("Give alteplase now.", OPTIONS) == "C"  # one option's text
    assert extract_choice("I am not sure.", OPTIONS) is None


def test_huatuo_takes_the_first_and_the_last_letter_and_the_better_of_the_two():
    from medreason.evaluate.protocols import huatuo_choice, score
    from medreason.answers.answering import Answer
    assert huatuo_choice("The answer is B. Wait, the answer is D.", OPTIONS) == ("B", "D", 1)
    assert huatuo_choice("## Thinking\n\nThe answer is A?\n\n## Final Response\n\nThe answer is C.", OPTIONS) == \
        ("C", "C", 1)  # only the final response is read
    assert huatuo_choice("(A) or (B)? I think B.", OPTIONS)[:2] == ("A", "B")
    assert huatuo_choice("A patient with B.", OPTIONS)[:2] == ("B", "B")  # "A " is the article, as theirs reads it
    assert huatuo_choice("A patient like this needs heparin, then alteplase", OPTIONS) == ("B", "C", 2)
    assert huatuo_choice("no idea at all", OPTIONS)[2] == 3  # a guess: counted as an extraction failure
    rows = [{"question": "q", "options": OPTIONS, "answer": k} for k in ("D", "D", "B")]
    texts = ["The answer is B. Wait, the answer is D.", "the answer is A, no: the answer is D", "answer is B"]
    answers = [Answer("q", t, "", t, "no_tags", 5, 0, False, 1.0) for t in texts]
    scored = score(rows, answers, "huatuo", "think_response")
    assert scored.metrics["letter"] == "last" and scored.metrics["accuracy"]["value"] == 1.0
    strict = score(rows, answers, "strict", "think_response")
    assert strict.metrics["letter"] == "last explicit" and strict.metrics["accuracy"]["value"] == 1.0


def test_the_average_weighs_each_benchmark_equally_with_an_interval():
    from medreason.evaluate.protocols import average
    result = average({"big": [1.0] * 90 + [0.0] * 10, "small": [0.0, 0.0, 1.0, 1.0]})
    assert result["value"] == pytest.approx((0.9 + 0.5) / 2) and result["n"] == 104
    assert result["ci95"][0] < result["value"] < result["ci95"][1]


# --- the thinking budget ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("style_name, reasoning", [("think_response", "<think>\nThe ST elevation is inferior"),
                                                   ("huatuo", "## Thinking\n\nThe ST elevation is inferior"),
                                                   ("r1", "The ST elevation is inferior")])
def test_the_budget_closes_reasoning_in_the_styles_layout_and_the_forced_answer_is_parsed(style_name, reasoning):
    from medreason.answers.answering import BUDGET_CLOSINGS, _budget_closing
    from medreason.answers.choices import extract_choice
    from medreason.answers.prompts import get_style
    from medreason.answers.tags import parse_answer
    style = get_style(style_name)
    closing = _budget_closing(reasoning, hit_budget=True, style=style)
    assert closing == BUDGET_CLOSINGS[style_name]
    assert _budget_closing(reasoning, hit_budget=False, style=style) is None  # stopped on its own: not ours to close
    text = reasoning + closing + "The answer is D." + ("\n</response>" if style_name == "think_response" else "")
    parsed = parse_answer(text, style, ended=True)
    assert parsed.status == "complete" and parsed.thinking.endswith("inferior")
    assert parsed.response == "The answer is D." and extract_choice(text, OPTIONS, style) == "D"
    closed = reasoning + closing + "x"
    assert _budget_closing(closed, hit_budget=True, style=style) is None  # already closed: nothing more to close
    assert _budget_closing("just an answer", True, get_style("plain")) is None  # plain has no reasoning block


@pytest.mark.parametrize("engine", ["continuous", "batched"])
def test_an_answer_reaching_the_budget_gets_its_reasoning_closed_by_either_engine(parrot_model_dir, engine):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from conftest import PARROT_ANSWERS
    from medreason.answers.answering import answer_batch
    from medreason.answers.prompts import get_style
    style = get_style("think_response")
    model = AutoModelForCausalLM.from_pretrained(parrot_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(parrot_model_dir)
    question = next(q for q, a in PARROT_ANSWERS.items() if "<response>" in a)
    full, = answer_batch(model, tok, [question], style, 64, engine=engine)
    assert full.status == "complete" and not full.budget_closed
    cut, = answer_batch(model, tok, [question], style, 64, engine=engine, think_budget=8, answer_budget=12)
    assert cut.budget_closed and cut.tokens <= 8 + 12
    head, _, tail = cut.text.partition("\n</think>\n<response>\n")
    assert head.startswith("<think>") and "</think>" not in head  # closed by us, exactly once, where it stopped
    assert cut.thinking and cut.thinking == head[len("<think>"):].strip()
    assert cut.response == tail.replace("</response>", "").strip()


def test_a_response_cut_by_the_think_budget_after_the_reasoning_closed_is_finished_not_lost(parrot_model_dir):
    """The reasoning closes on its own inside the think budget, but the budget ends inside the response: that answer
    gets answer_budget more tokens (even with no continuations allowed, as the exam protocols run) and ends whole."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from conftest import PARROT_ANSWERS
    from medreason.answers.answering import answer_batch
    from medreason.answers.prompts import get_style
    style = get_style("think_response")
    model = AutoModelForCausalLM.from_pretrained(parrot_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(parrot_model_dir)
    question = next(q for q, a in PARROT_ANSWERS.items() if "<response>" in a)
    full, = answer_batch(model, tok, [question], style, 64, max_continuations=0)
    reasoning = full.text[:full.text.index("<response>") + len("<response>")]
    budget = len(tok(reasoning, add_special_tokens=False)["input_ids"]) + 2  # two tokens into the response
    assert full.status == "complete" and full.tokens > budget + 1  # so the budget really cuts the response
    cut, = answer_batch(model, tok, [question], style, 64, max_continuations=0, think_budget=budget, answer_budget=32)
    assert not cut.budget_closed and cut.status == "complete" and cut.response == full.response
    assert cut.tokens <= budget + 32 and cut.continuations == 1


# --- the card's model-index: one entry per benchmark, read back by huggingface_hub's own loader ---------------------

def test_model_index_has_one_entry_per_benchmark_and_parses_with_huggingface_hub(tmp_path):
    import json
    from huggingface_hub import ModelCard
    from medreason.publish import hub
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "benchmarks").mkdir()
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-3B"}))
    (run / "results.json").write_text(json.dumps({"settings": {"DATASET": "x.jsonl", "MAX_NEW_TOKENS": 512},
                                                  "metrics": {"eval_samples": 0}, "evaluation": None}))
    metric = lambda v: {"value": v, "ci95": [v - 0.1, v + 0.1], "n": 50}  # noqa: E731
    cell = lambda v: {"accuracy": metric(v), "extraction_rate": metric(0.98), "budget_closed": 3}  # noqa: E731
    table = {"protocol": "strict", "protocol_detail": "greedy", "think_budget": None, "average": {
        "base": metric(0.4), "tuned": metric(0.5)}, "benchmarks": {
        "medqa": {"dataset_id": "GBaker/MedQA-USMLE-4-options", "subset": None, "split": "test", "n": 50,
                  "base": cell(0.41), "tuned": cell(0.523)},
        "pubmedqa": {"dataset_id": "qiaojin/PubMedQA", "subset": "pqa_labeled", "split": "train", "n": 50,
                     "base": cell(0.6), "tuned": cell(0.7)},
        "medmcqa_dev": {"dataset_id": "../shared/data/medmcqa_dev.jsonl", "subset": None, "split": "", "n": 50,
                        "base": cell(0.3), "tuned": cell(0.35)}}}
    (run / "benchmarks" / "results.json").write_text(json.dumps(table))
    card = hub.render_card(run, "me/medical-lora")
    parsed = ModelCard(str(card))  # the Hub's own parser of the card's YAML header and its model-index
    results = {r.dataset_name: r for r in parsed.data.eval_results if r.metric_type == "accuracy"}
    assert sorted(results) == ["medmcqa_dev", "medqa", "pubmedqa"]
    assert results["medqa"].metric_value == 52.3 and results["medqa"].dataset_type == "GBaker/MedQA-USMLE-4-options"
    assert results["pubmedqa"].dataset_config == "pqa_labeled" and results["medqa"].dataset_split == "test"
    assert "strict protocol, n=50" in results["medqa"].metric_name and results["medmcqa_dev"].dataset_type == \
        "medmcqa_dev"
    model_index = parsed.data.to_dict()["model-index"][0]["results"]
    assert len([r for r in model_index if r["task"]["type"] == "multiple-choice"]) == 3
    assert "### Exam benchmarks" in card.text and "52.3 [42.3, 62.3]" in card.text


# --- a whole evaluate.py --benchmarks run on the embedded model over local files --------------------------------------

@pytest.fixture(scope="module")
def embedded_adapter(tmp_path_factory, embedded_dir):
    """A LoRA adapter on the embedded model (freshly initialised: B = 0, so tuned = base), as the trainer saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from medreason.model.for_training import save_adapter
    from medreason.answers.prompts import get_style
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(embedded_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    style = get_style("think_response")
    folder = tmp_path_factory.mktemp("embedded-run") / "adapter"
    return save_adapter(model, AutoTokenizer.from_pretrained(embedded_dir), folder,
                        {"model_name": "embedded", "prompt_style": style.name, "system_prompt": style.system_prompt})


def test_evaluate_script_runs_benchmarks_on_the_embedded_model(embedded_adapter, tmp_path):
    import json
    import subprocess
    import sys
    from conftest import ROOT
    rows = [{"question": q, "options": {"A": "Insulin", "B": "Glucagon", "C": "Cortisol", "D": "Thyroxine"},
             "answer": a} for q, a in [("Which hormone lowers blood glucose?", "A"),
                                       ("Which hormone raises blood glucose in fasting?", "B"),
                                       ("Which hormone is made by the adrenal cortex?", "C"),
                                       ("Which hormone is made by the thyroid?", "D"),
                                       ("Which hormone do beta cells secrete?", "A"),
                                       ("Which hormone do alpha cells secrete?", "B")]]
    local = tmp_path / "hormones.jsonl"
    local.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fields = tmp_path / "exam.jsonl"  # the same rows in a dataset's own field names, declared in YAML
    fields.write_text("\n".join(json.dumps({"stem": r["question"], "choices": list(r["options"].values()),
                                            "gold": "ABCD".index(r["answer"])}) for r in rows) + "\n")
    (tmp_path / "exam.yaml").write_text("dataset: exam.jsonl\nquestion: stem\noptions: choices\nanswer: gold\n"
                                        "answer_format: index\n")
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "--adapter", str(embedded_adapter), "--benchmarks",
         str(tmp_path / "exam.yaml"), "--data", str(local), "--limit", "4", "--max-new-tokens", "24",
         "--think-budget", "12", "--answer-budget", "8", "--output", str(out), "--backend", "transformers"],
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["protocol"] == "strict" and result["think_budget"] == 12 and set(result["benchmarks"]) == {
        "exam", "hormones"}
    for name, row in result["benchmarks"].items():
        assert row["n"] == 4 and "sample of 4 of 6 rows, stratified" in row["sampled"]
        # A zero-initialised adapter: the tuned model answers exactly as the base does.
        assert row["tuned"]["accuracy"] == row["base"]["accuracy"] and sum(row["tuned"]["statuses"].values()) == 4
        assert 0 <= row["tuned"]["budget_closed"] <= 4
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 16 and all(a["tokens"] <= 12 + 8 for a in answers)
    report = (out / "report.md").read_text()
    assert "Protocol: **strict**" in report and "| **average** |" in report and (out / "metrics.png").stat().st_size
    assert "protocol: strict" in proc.stdout and "budget closed" in proc.stdout


def test_prepare_dataset_warns_and_decontaminate_drops_the_overlapping_rows(tmp_path, capsys):
    import json
    from prepare_dataset import check_contamination
    from medreason.evaluate.benchmarks import preflight_contamination
    exam = tmp_path / "exam.jsonl"
    exam.write_text(json.dumps({"question": QUESTION, "options": {"A": "PCI", "B": "Aspirin"}, "answer": "A"}) + "\n")
    rows = [{"Question": "Unrelated question about asthma?", "Complex_CoT": "Think.", "Response": "Inhaler."},
            {"Question": "Copied: " + QUESTION[30:120], "Complex_CoT": "Think.", "Response": "PCI."}]
    kept, found = check_contamination(rows, str(exam), decontaminate=False)
    assert kept == rows and found["rows"] == 1 and found["dropped"] == 0
    assert "WARNING: 1 dataset row(s) share 64+ characters with exam's questions" in capsys.readouterr().out
    kept, found = check_contamination(rows, str(exam), decontaminate=True)
    assert kept == rows[:1] and found["dropped"] == 1
    # The trainer's preflight reads its prompt/completion examples the same way, and says which row and what text.
    examples = [{"prompt": [{"role": "user", "content": r["Question"]}],
                 "completion": [{"role": "assistant", "content": r["Response"]}]} for r in rows]
    assert preflight_contamination(examples, str(exam))["exam"]["rows"] == [1]
    out = capsys.readouterr().out
    assert "training row 2 shares" in out and "--decontaminate" in out


def test_huatuo_protocol_asks_their_prompt_alone_and_samples_repeatably(parrot_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from medreason.evaluate import protocols
    from medreason.answers.prompts import get_style
    model = AutoModelForCausalLM.from_pretrained(parrot_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(parrot_model_dir)
    rows = [{"question": "Which drug class causes a dry cough?", "options": OPTIONS, "answer": "A"}] * 2
    questions, style, sampling = protocols.ask(rows, "huatuo", get_style("think_response"))
    assert questions[0].startswith("Please answer the following multiple-choice question:\nWhich drug class")
    assert questions[0].endswith("D. Percutaneous coronary intervention") and style.system_prompt == ""
    assert (sampling.do_sample, sampling.temperature, sampling.top_p) == (True, 0.5, 0.9)
    first = protocols.run(model, tok, rows, "huatuo", get_style("think_response"), 12, 2, "batched", seed=5)
    again = protocols.run(model, tok, rows, "huatuo", get_style("think_response"), 12, 2, "batched", seed=5)
    assert [a.text for a in first.answers] == [a.text for a in again.answers]
    assert first.metrics["letter"] in ("first", "last") and first.metrics["n"] == 2
