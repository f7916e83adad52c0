import json

import pytest

from medreason.data import layouts
from medreason.data.layouts import FIELDS, DataError
from medreason.data.readers import DEMO_DATASET, load_records, shorten_reasoning, shorten_rows, split, validate
from medreason.config.errors import UserError

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
    assert dropped == {"Response is null": 1, "Response is missing": 1, "Complex_CoT is a number, not text": 1,
                       "Question is empty": 1}


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


# --- bad input: each answered by a one-line DataError naming the file (and line) and the fix ----------------------

def parquet_bytes(rows):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


LINE = json.dumps(ROW).encode()
BAD_FILES = {
    "invalid UTF-8": ("rows.jsonl", LINE + b'\n{"Question": "caf\xe9"}\n', r"rows\.jsonl:2: not UTF-8 text .*iconv"),
    "invalid UTF-8 in a CSV": ("rows.csv", b"Question,Complex_CoT,Response\nq,c,\xff\n", r"rows\.csv:2: not UTF-8"),
    "empty file": ("rows.jsonl", b"", r"rows\.jsonl: the file has no rows \(it is empty: 0 bytes\)"),
    "blank lines only": ("rows.jsonl", b"\n \n\r\n", r"rows\.jsonl: the file has no rows\. Fix"),
    "empty JSON list": ("rows.json", b"[]", r"rows\.json: the file has no rows"),
    "CSV header only": ("rows.csv", b"Question,Complex_CoT,Response\n", r"rows\.csv: the file has no rows"),
    "JSON array of non-objects": ("rows.json", b'[{"Question": "q"}, 3, "x"]',
                                  r"rows\.json: item 2 of the list is a number, not an object"),
    "JSON Lines of lists": ("rows.jsonl", b"[1, 2]\n[3]\n", r"rows\.jsonl:1: expected a JSON object .* got a list"),
    "a JSON string, not a list": ("rows.json", b'"rows"', r"rows\.json: expected a list of objects .* got text"),
    "CSV ragged row (extra value)": ("rows.csv", b"Question,Complex_CoT,Response\nq,c,r\nq,c,r,x\n",
                                     r"rows\.csv:3: this row has 4 values, the header has 3\. Fix: put quotes"),
    "CSV ragged row (missing value)": ("rows.csv", b"Question,Complex_CoT,Response\nq,c\n",
                                       r"rows\.csv:2: this row has 2 values, the header has 3"),
    "CSV repeated column": ("rows.csv", b"Question,Question,Response\nq,c,r\n",
                            r"rows\.csv:1: the column 'Question' appears twice"),
    "CSV quote left open": ("rows.csv", b'Question,Complex_CoT,Response\n"q,c,r\n',
                            r"rows\.csv:\d+: (not readable CSV|this row has 1 values)"),
    "truncated Parquet": ("rows.parquet", parquet_bytes([ROW] * 20)[:300],
                          r"rows\.parquet: not a readable Parquet file .*Fix: write it again"),
    "not Parquet at all": ("rows.parquet", b"Question,Complex_CoT\n", r"rows\.parquet: not a readable Parquet file"),
    "repeated key (JSON Lines)": ("rows.jsonl", LINE + b'\n{"Question": "a", "Question": "b"}\n',
                                  r"rows\.jsonl:2: the key 'Question' appears twice in the object starting on this "
                                  r"line\. Fix"),
    "repeated key (JSON list)": ("rows.json", b'[\n' + LINE + b',\n {"Response": "a",\n  "Response": "b"}\n]',
                                 r"rows\.json:3: the key 'Response' appears twice"),
    "repeated key in a nested object": ("rows.json", b'[{"Question": "q",\n"meta": {"a": 1, "a": 2}}]',
                                        r"rows\.json:2: the key 'a' appears twice"),
    "one huge line of garbage": ("rows.jsonl", b"{" + b"x" * 5_000_000 + b"\n",
                                 r"rows\.jsonl:1: not valid JSON \(Expecting property name"),
    "a number of 5,000 digits": ("rows.jsonl", b'{"Question": ' + b"7" * 5000 + b"}\n",
                                 r"rows\.jsonl:1: not readable JSON \(Exceeds the limit"),
    "JSON nested 100,000 deep": ("rows.json", b"[" * 100_000, r"rows\.json:1: JSON nested too deeply"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_is_one_line_naming_the_file_and_the_fix(tmp_path, name):
    filename, content, expected = BAD_FILES[name]
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as err:
        validate(load_records(str(path)), str(path))
    message = str(err.value)
    assert "\n" not in message and len(message) < 600 and "Fix" in message, message


def test_byte_order_marks_are_accepted(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "rows.jsonl").write_bytes(bom + LINE + b"\n" + bom + LINE + b"\n")  # two exports concatenated
    (tmp_path / "rows.json").write_bytes(bom + json.dumps([ROW]).encode())
    (tmp_path / "rows.csv").write_bytes(bom + b"Question,Complex_CoT,Response\nq,c,r\n")
    (tmp_path / "utf16.csv").write_bytes(b"\xff\xfe" + "Question\tComplex_CoT\tResponse\nq\tc\tr\n".encode("utf-16-le"))
    for name, expected in (("rows.jsonl", 2), ("rows.json", 1), ("rows.csv", 1), ("utf16.csv", 1)):
        rows, dropped = validate(load_records(str(tmp_path / name)), name)
        assert len(rows) == expected and not dropped and set(rows[0]) == set(FIELDS), name


def test_spreadsheet_exports_are_read(tmp_path, capsys):
    semicolons = tmp_path / "semicolons.csv"  # European Excel: ';' between fields, ',' inside them
    semicolons.write_text("Question;Complex_CoT;Response\nWhat, then?;c;r\n")
    assert load_records(str(semicolons)) == [{"Question": "What, then?", "Complex_CoT": "c", "Response": "r"}]
    assert "reading it as semicolon-separated" in capsys.readouterr().out
    trailing = tmp_path / "trailing.csv"  # empty columns a spreadsheet adds after the last named one
    trailing.write_text('Question,Complex_CoT,Response,,\n"Line one\nline two, with comma",c,r,,\n')
    assert load_records(str(trailing)) == [{"Question": "Line one\nline two, with comma", "Complex_CoT": "c",
                                            "Response": "r"}]


def test_huge_rows_are_read(tmp_path):
    long_text = "word " * 1_000_000  # 5 MB in one field: over the csv module's 128 KB default field limit
    (tmp_path / "rows.jsonl").write_text(json.dumps({**ROW, "Complex_CoT": long_text}) + "\n")
    (tmp_path / "rows.csv").write_text(f"Question,Complex_CoT,Response\nq,{long_text},r\n")
    for name in ("rows.jsonl", "rows.csv"):
        rows, _ = validate(load_records(str(tmp_path / name)), name)
        assert rows[0]["Complex_CoT"] == long_text


def test_json_list_saved_as_jsonl_and_jsonl_saved_as_json_are_read(tmp_path):
    (tmp_path / "list.jsonl").write_text(json.dumps([ROW, ROW]))
    (tmp_path / "lines.json").write_text(json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n")
    assert len(load_records(str(tmp_path / "list.jsonl"))) == 2 and len(load_records(str(tmp_path / "lines.json"))) == 2


def test_values_that_are_not_text_are_dropped_and_named(tmp_path):
    records = [ROW, {**ROW, "Question": 42}, {**ROW, "Response": ["a", "b"]}, {**ROW, "Complex_CoT": {"a": 1}},
               {**ROW, "Question": True}, {**ROW, "Response": float("nan")}, {**ROW, "Question": "\ud800"}]
    rows, dropped = validate(records, "x")
    assert rows == [ROW]
    assert dropped == {"Question is a number, not text": 1, "Response is a list, not text": 1,
                       "Complex_CoT is an object, not text": 1, "Question is true/false, not text": 1,
                       "Response is NaN (an empty cell)": 1,
                       "Question is not valid Unicode (a lone surrogate escape)": 1}
    # A column of numbers where the question belongs: every row dropped, and the error says why.
    path = tmp_path / "ids.parquet"
    path.write_bytes(parquet_bytes([{**ROW, "Question": i} for i in range(5)]))
    with pytest.raises(DataError, match=r"no usable rows \(5 read, all dropped: \{'Question is a number, not text'"):
        validate(load_records(str(path)), str(path))


def test_missing_fields_message_stays_short_and_hints_at_case(tmp_path):
    wide = {f"column_{i}_" + "x" * 200: "v" for i in range(50)}
    with pytest.raises(DataError) as err:
        validate([wide], "wide.jsonl")
    assert len(str(err.value)) < 2000 and "(30 more)" in str(err.value)
    with pytest.raises(DataError, match=r"case-sensitive \('question' for 'Question'\)"):
        validate([{"question": "q", "Complex_CoT": "c", "Response": "r"}], "lower.jsonl")


LAYOUT_ROWS = {  # one row of each layout, as a file would hold it
    "pairs": {"prompt": "q", "chosen": "a", "rejected": "b"},
    "medical-o1": ROW,
    "instruction": {"instruction": "q", "output": "a"},
    "messages": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    "mcq": {"question": "q", "options": {"A": "x", "B": "y"}, "answer": "A"},
    "questions": {"Question": "q"},
}


@pytest.mark.parametrize("stage, accepted", [("training", ("medical-o1", "instruction", "messages")),
                                             ("evaluation", ("medical-o1", "mcq")),
                                             ("preference", ("pairs", "medical-o1", "mcq", "questions"))])
def test_one_detector_names_each_layout_a_stage_reads_and_refuses_the_others(stage, accepted, tmp_path):
    """The trainer, evaluate.py and the preference/RL stages all ask layouts.detect: the same rows get the same
    layout, and each stage refuses the layouts it does not read with its own message."""
    from medreason.evaluate.comparison import detect_kind
    from medreason.preference.pairs import read_source

    def preference_layout(rows):
        path = write_jsonl(tmp_path / "rows.jsonl", [json.dumps(row) for row in rows])
        return read_source(str(path))[0]
    reads = {"training": lambda rows: layouts.detect(rows, "f", layouts.TRAINING).name,
             "evaluation": lambda rows: detect_kind(rows, "f"), "preference": preference_layout}[stage]
    refusal = {"training": r"field '.*' is missing\. Fields found: .*instruction/response",
               "evaluation": "rows have fields", "preference": "none of the layouts this stage reads"}[stage]
    for name, row in LAYOUT_ROWS.items():
        if name in accepted:
            assert reads([row]) == ("reasoning" if name == "medical-o1" and stage != "training" else name)
        else:
            with pytest.raises(DataError, match=refusal):
                reads([row])


def test_the_detector_pools_the_fields_of_every_row(tmp_path):
    """A medical-o1 file whose first row lacks a field is still medical-o1 for every stage (evaluate.py once looked
    at the first row only), and the unusable row is dropped and counted, not the whole file refused."""
    from medreason.evaluate.comparison import detect_kind
    rows = [{"Question": "q", "Response": "r"}, ROW]
    assert layouts.detect(rows, "f") is layouts.MEDICAL_O1 and detect_kind(rows, "f") == "reasoning"
    assert validate(rows, "f") == ([ROW], {"Complex_CoT is missing": 1})
    with pytest.raises(DataError, match=r"f: rows have fields prompt, text\. Fix: give medical-o1 rows"):
        detect_kind([{"prompt": "", "text": ""}], "f")


def test_empty_records_are_no_rows_not_missing_fields():
    with pytest.raises(DataError, match=r"x\.jsonl: no rows\. Fix"):
        validate([], "x.jsonl")


def test_a_folder_is_not_a_file(tmp_path):
    (tmp_path / "rows.jsonl").mkdir()
    with pytest.raises(DataError, match="is a folder, not a file"):
        load_records(str(tmp_path / "rows.jsonl"))


def test_hub_rows_are_validated_like_file_rows(monkeypatch):
    """The Hub cannot be reached here: load_dataset is given the rows a Hub dataset would hold (a real Dataset)."""
    import datasets
    hub = {"good/rows": [ROW, {**ROW, "Response": None}], "numbers/rows": [{**ROW, "Response": 7}] * 3,
           "empty/rows": []}
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda name, config, split: datasets.Dataset.from_list(hub[name]) if hub[name]
                        else datasets.Dataset.from_dict({"Question": []}))
    rows, dropped = validate(load_records("good/rows"), "good/rows")
    assert rows == [ROW] and dropped == {"Response is null": 1}
    with pytest.raises(DataError, match=r"numbers/rows: no usable rows .*'Response is a number, not text': 3"):
        validate(load_records("numbers/rows"), "numbers/rows")
    with pytest.raises(DataError, match=r"DATASET='empty/rows' \(config None\): its train split has no rows"):
        load_records("empty/rows")


# --- the command lines: bad input is a UserError (one line, no traceback), found before any model loads --------------

def bad_cli_files(tmp_path):
    files = {"invalid_utf8.jsonl": b'{"question": "caf\xe9"}\n', "empty.jsonl": b"",
             "number.jsonl": b'{"question": 42}\n', "nested.json": b'[{"question": {"text": "q"}}]',
             "ragged.csv": b"question,options,answer\nq,x\nq,x,y,z\n",
             "truncated.parquet": parquet_bytes([ROW] * 20)[:200],
             "answer_list.jsonl": b'{"question": "q", "options": {"A": "x"}, "answer": ["A"]}\n',
             "option_number.jsonl": b'{"question": "q", "options": {"A": 1, "B": "y"}, "answer": "A"}\n',
             "mcq_question_null.jsonl": b'{"question": null, "options": {"A": "x"}, "answer": "A"}\n'}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return tmp_path


@pytest.mark.parametrize("name, expected", [
    ("invalid_utf8.jsonl", r"invalid_utf8\.jsonl:1: not UTF-8 text"),
    ("empty.jsonl", r"empty\.jsonl: the file has no rows .*point --input at"),
    ("number.jsonl", r"number\.jsonl: row 1 has 'question' is a number, not text"),
    ("nested.json", r"nested\.json: row 1 has 'question' is an object, not text"),
    ("absent.jsonl", r"--input .*absent\.jsonl: no such file"),
])
def test_inference_input_errors(tmp_path, name, expected):
    import inference
    folder = bad_cli_files(tmp_path)
    with pytest.raises(UserError, match=expected) as err:  # "nowhere" is never loaded: the file is read first
        inference.main(["--adapter", str(tmp_path / "nowhere"), "--input", str(folder / name)])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name, expected", [
    ("ragged.csv", r"ragged\.csv:2: this row has 2 values, the header has 3"),
    ("truncated.parquet", r"truncated\.parquet: not a readable Parquet file"),
    ("answer_list.jsonl", r"answer_list\.jsonl: row 1 needs 'options' .*got answer \"\['A'\]\""),
    ("option_number.jsonl", r"option_number\.jsonl: row 1 needs 'options' as \{\"A\": text"),
    ("mcq_question_null.jsonl", r"mcq_question_null\.jsonl: row 1: 'question' is null"),
])
def test_evaluate_data_errors(tmp_path, name, expected):
    import evaluate
    folder = bad_cli_files(tmp_path)
    with pytest.raises(UserError, match=expected) as err:
        evaluate.main(["--adapter", str(tmp_path / "nowhere"), "--data", str(folder / name)])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damage, expected", [
    ("not a run", r"results\.json not found: publish a folder written by medical_fine_tuning\.py"),
    ("results.json cut short", r"results\.json: damaged, not readable JSON .*Fix: run the same training command"),
    ("results.json a list", r"results\.json: has no 'settings', 'metrics'"),
    ("no adapter", r"adapter: no adapter_config\.json, so there is no adapter to publish"),
    ("adapter_config.json cut short", r"adapter_config\.json: damaged, not readable JSON"),
    ("training_info.json not UTF-8", r"training_info\.json: damaged, not readable JSON \(UnicodeDecodeError"),
])
def test_publish_errors_on_a_folder_that_is_not_a_finished_run(tmp_path, damage, expected):
    import publish
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    results = {"results.json cut short": '{"settings": {}, "metrics": {"rouge_l": 0.3',
               "results.json a list": "[]"}.get(damage, '{"settings": {}, "metrics": {}}')
    if damage != "not a run":
        (run / "results.json").write_text(results)
    if damage not in ("not a run", "no adapter"):
        config = '{"base_model_name_or_path": "x"' + ("" if damage == "adapter_config.json cut short" else "}")
        (run / "adapter" / "adapter_config.json").write_text(config)
        (run / "adapter" / "training_info.json").write_bytes(b'{"model_name": "\xff"}' if "UTF-8" in damage else b"{}")
    with pytest.raises(UserError, match=expected) as err:
        publish.main(["--output-dir", str(run), "--dry-run"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arguments, expected", [
    ({"size": -5}, r"--size -5: a number of rows\. Fix"),
    ({"test_fraction": 1.0}, r"--test-fraction 1\.0: a share of the rows\. Fix"),
    ({"dataset": "repeated"}, r"repeated\.json:1: the key 'Question' appears twice in the object starting"),
    ({"dataset": "missing.jsonl"}, r"--dataset='.*missing\.jsonl': no such file"),
])
def test_prepare_dataset_errors(tmp_path, arguments, expected):
    from prepare_dataset import prepare
    (tmp_path / "repeated.json").write_text('[{"Question": "a",\n"Question": "b"}]')
    (tmp_path / "rows.jsonl").write_text(json.dumps(ROW) + "\n")
    dataset = {"repeated": tmp_path / "repeated.json", "missing.jsonl": tmp_path / "missing.jsonl"}.get(
        arguments.pop("dataset", None), tmp_path / "rows.jsonl")
    with pytest.raises(UserError, match=expected):
        prepare(str(dataset), tmp_path / "out", **arguments)


def test_a_test_split_that_leaves_no_training_rows_is_refused():
    from medreason.data.subsets import train_test_split
    with pytest.raises(DataError, match=r"1 row\(s\) left: a test split of 10% leaves none for training"):
        train_test_split([ROW], 0.1, seed=0)
    assert train_test_split([ROW], 0.0, seed=0) == ([ROW], [])


def test_evaluate_skips_a_damaged_training_log(tmp_path, capsys):
    import evaluate
    log = tmp_path / "log_history.json"
    log.write_text('[{"loss": 1.0, "step": 1}, {"loss": ')  # the run was killed while writing it
    assert evaluate.read_history(log) is None
    assert "is not readable (JSONDecodeError); the report has no loss curve" in capsys.readouterr().out
    log.write_text('[{"loss": 1.0, "step": 1}]')
    assert evaluate.read_history(log) == [{"loss": 1.0, "step": 1}]
