"""prepare_dataset.py and the notebooks that build on it."""
import json
import shutil

import nbformat
import pytest

from conftest import ROOT
from medreason.data import subsets
from medreason.data.readers import DEMO_DATASET, load_records, validate


def test_question_types():
    assert subsets.question_type("What is the most likely diagnosis?") == "diagnosis"
    assert subsets.question_type("What is the drug of choice for this patient?") == "management"
    assert subsets.question_type("Which test confirms it?") == "investigation"
    assert subsets.question_type("What is he at increased risk of developing?") == "risk"
    assert subsets.question_type("Explain the mechanism of action of aspirin.") == "mechanism"
    assert subsets.question_type("How many bones are in the hand?") == "other"


def test_stratified_subset_keeps_the_type_mix_and_is_seeded():
    rows = [{"Question": "What is the diagnosis?"}] * 60 + [{"Question": "How is it treated?"}] * 40
    lengths = list(range(100))
    chosen = subsets.stratified_subset(rows, lengths, 20, seed=1)
    assert len(chosen) == len(set(chosen)) == 20
    assert sum(rows[i]["Question"].startswith("What") for i in chosen) == 12  # 60% stays 60%
    assert sorted(lengths[i] // 25 for i in chosen) == sorted([0] * 5 + [1] * 5 + [2] * 5 + [3] * 5)  # quartiles
    assert chosen == subsets.stratified_subset(rows, lengths, 20, seed=1)
    assert chosen != subsets.stratified_subset(rows, lengths, 20, seed=2)


def test_prepare_the_real_sample(tmp_path, real_rows):
    from prepare_dataset import prepare
    rows = real_rows + [dict(real_rows[0], Question="  " + real_rows[0]["Question"].upper() + " "),
                        dict(real_rows[1], Response="")]
    source = tmp_path / "with_problems.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "prepared"
    stats = prepare(str(source), out, size=100, seed=7)
    assert stats["read"] == 152 and stats["kept"] == 150
    assert stats["dropped"] == {"Response is empty": 1, "duplicate question": 1}
    assert stats["subset"] == 100 and (stats["train"], stats["test"]) == (90, 10)
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert len(train) == 90 and len(test) == 10
    assert {r["Question"] for r in train}.isdisjoint(r["Question"] for r in test)
    assert set(stats["tokens"]) == {"Question", "Complex_CoT", "Response", "example"}
    assert stats["tokens"]["example"]["max"] > stats["tokens"]["Complex_CoT"]["max"]
    assert (out / "length_histogram.png").read_bytes()[:4] == b"\x89PNG"
    for path in (out / "train.jsonl", out / "test.jsonl"):  # the trainer accepts them as DATASET
        assert len(validate(load_records(str(path)), str(path))[0]) in (90, 10)
    again = prepare(str(source), tmp_path / "again", size=100, seed=7)
    assert (tmp_path / "again" / "train.jsonl").read_text() == (out / "train.jsonl").read_text()
    assert again["question_types"] == stats["question_types"]


def execute(name, tmp_path):
    from nbclient import NotebookClient
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source = parameters.source.replace("QUICK = False", "QUICK = True")
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    nbformat.write(notebook, tmp_path / name)
    return notebook


def outputs(notebook) -> str:
    return "\n".join(o.get("text", "") if o.get("output_type") == "stream" else json.dumps(o.get("data", {}))
                     for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)


@pytest.mark.e2e
def test_exploration_notebook_runs(tmp_path):
    text = outputs(execute("01_data_exploration.ipynb", tmp_path))
    assert f"from {DEMO_DATASET}" in text and "[MASKED]" in text and "image/png" in text


@pytest.mark.e2e
def test_colab_notebook_runs_in_its_quick_configuration(tmp_path):
    shutil.rmtree(ROOT / "outputs" / "notebook-quick", ignore_errors=True)  # a fresh run, not a resume
    text = outputs(execute("colab_training.ipynb", tmp_path))
    assert "No CUDA GPU" in text and "[status: " in text and "dry run: nothing uploaded" in text
    assert "Evaluation report" in text and "not medical advice" in text


@pytest.mark.e2e
def test_evaluation_notebook_shows_a_finished_run(tmp_path):
    text = outputs(execute("02_evaluation.ipynb", tmp_path))
    assert "| metric | base | tuned | difference |" in text and "| format_compliance |" in text
    assert "=== 1. " in text and "--- tuned (" in text and "image/png" in text  # side by side, charts
    assert "new tokens per answer (the training run's MAX_NEW_TOKENS" in text and "[eval] report:" in text


def test_notebooks_are_valid_and_call_the_project():
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        source = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
        assert "from prepare_dataset import prepare" in source or "from medreason" in source
        assert not any(c.outputs for c in notebook.cells if c.cell_type == "code"), f"{path.name}: clear outputs"
