import json

import pytest

from medreason.data import (DEMO_DATASET, FIELDS, DataError, load_records, shorten_reasoning, shorten_rows, split,
                            validate)

ROW = {"Question": "Q?", "Complex_CoT": "reasoning", "Response": "answer"}


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [json.dumps(ROW), json.dumps(ROW), '{"Question": "broken'])
    with pytest.raises(DataError, match=r"rows\.jsonl:3: not valid JSON") as err:
        load_records(str(path))
    assert "Fix" in str(err.value)


def test_missing_field_is_named_and_found_fields_listed(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [json.dumps({"Question": "Q", "CoT": "c", "Response": "r"})])
    with pytest.raises(DataError, match="'Complex_CoT' is missing. Fields found: CoT, Question, Response"):
        validate(load_records(str(path)), str(path))


def test_bad_rows_are_dropped_and_counted():
    records = [ROW, {**ROW, "Response": None}, {**ROW, "Complex_CoT": 3}, {**ROW, "Question": "  "}, ROW,
               {k: v for k, v in ROW.items() if k != "Response"}]
    rows, dropped = validate(records, "x")
    assert len(rows) == 2 and all(set(r) == set(FIELDS) for r in rows)
    assert dropped == {"Response is null": 2, "Complex_CoT is not text": 1, "Question is empty": 1}


def test_no_rows_left_is_an_error():
    with pytest.raises(DataError, match="no usable rows"):
        validate([{**ROW, "Response": ""}], "x")


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_records(str(tmp_path / "absent.jsonl"))
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_records(str(tmp_path / "rows.txt"))


def test_json_csv_and_parquet_files_load(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    (tmp_path / "rows.json").write_text(json.dumps([ROW, ROW]))
    with (tmp_path / "rows.csv").open("w") as f:
        f.write("Question,Complex_CoT,Response\n\"Q, with comma?\",reasoning,answer\n")
    pq.write_table(pa.Table.from_pylist([ROW] * 3), tmp_path / "rows.parquet")
    assert len(load_records(str(tmp_path / "rows.json"))) == 2
    assert load_records(str(tmp_path / "rows.csv"))[0]["Question"] == "Q, with comma?"
    assert len(load_records(str(tmp_path / "rows.parquet"))) == 3


def test_hub_dataset_offline_says_to_use_a_local_file():
    with pytest.raises(DataError, match="could not be loaded from the Hugging Face Hub.*--DATASET="):
        load_records("FreedomIntelligence/medical-o1-reasoning-SFT", "en")


def test_split_is_seeded_and_disjoint():
    rows = [{**ROW, "Question": f"Q{i}"} for i in range(50)]
    train, val = split(rows, val_size=10, train_samples=None, seed=1)
    again_train, again_val = split(rows, val_size=10, train_samples=None, seed=1)
    other_train, _ = split(rows, val_size=10, train_samples=None, seed=2)
    assert len(train) == 40 and len(val) == 10
    assert set(train["Question"]).isdisjoint(val["Question"])
    assert train["Question"] == again_train["Question"] and val["Question"] == again_val["Question"]
    assert train["Question"] != other_train["Question"]
    subset, _ = split(rows, val_size=10, train_samples=5, seed=1)
    assert subset["Question"] == train["Question"][:5]


def test_split_that_leaves_no_training_rows_suggests_a_size():
    with pytest.raises(DataError, match="VAL_SIZE=100 leaves no training rows.*--VAL_SIZE="):
        split([ROW] * 20, val_size=100, train_samples=None, seed=0)


def test_shipped_demo_data_is_valid_and_marked_illustrative():
    rows, dropped = validate(load_records(str(DEMO_DATASET)), str(DEMO_DATASET))
    assert len(rows) >= 30 and not dropped
    assert "illustrative" in (DEMO_DATASET.parent / "README.md").read_text().lower()


def test_real_rows_validate(real_rows):
    rows, dropped = validate(real_rows, "shared sample")
    assert len(rows) == len(real_rows) == 150 and not dropped


def test_shortened_reasoning_keeps_the_opening_and_the_conclusion():
    paragraphs = [f"Paragraph {i} " + "word " * 30 for i in range(8)] + ["So the answer is lupus."]
    text = "\n\n".join(p.strip() for p in paragraphs)
    short = shorten_reasoning(text, 100)
    kept = short.split("\n\n")
    assert kept[0].startswith("Paragraph 0") and kept[-1] == "So the answer is lupus."
    assert len(short.split()) <= 100 and kept == [p.strip() for p in paragraphs[:len(kept) - 1]] + [kept[-1]]
    assert shorten_reasoning(text, 10_000) == text  # short enough already: unchanged
    one_paragraph = "First we look. " * 20 + "Then it must be gout."
    assert shorten_reasoning(one_paragraph, 30).endswith("Then it must be gout.")  # sentences when one paragraph


def test_shorten_rows_counts_changes_and_rejects_a_bad_setting():
    long_row = {**ROW, "Complex_CoT": "\n\n".join(["step " * 50] * 4 + ["Therefore X."])}
    rows, changed = shorten_rows([ROW, long_row], 60)
    assert changed == 1 and rows[0] == ROW and rows[1]["Complex_CoT"].endswith("Therefore X.")
    assert shorten_rows([long_row], None) == ([long_row], 0)
    with pytest.raises(DataError, match="MAX_THINK_WORDS=0"):
        shorten_rows([ROW], 0)
