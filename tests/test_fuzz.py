"""Property-based fuzzing of what users type and feed: whatever bytes a data file holds and whatever JSON it encodes,
the readers and validation return rows or raise a one-line UserError, never another exception; the same for the
settings parser and any --NAME=value. Example counts are modest so that this file runs in seconds."""
import io
import json
import runpy
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from medreason.data.readers import FIELDS, load_records, validate
from medreason.config.errors import UserError
from medreason.config.settings import collect, parse_overrides

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ROW = {"Question": "Q?", "Complex_CoT": "reasoning", "Response": "answer"}


def read_and_validate(path):
    """Rows, or a UserError whose message is one line; anything else fails the test."""
    try:
        rows, _ = validate(load_records(str(path)), str(path))
    except UserError as error:
        assert "\n" not in str(error) and str(error).startswith(str(path)), str(error)
        return None
    assert rows and all(set(row) == set(FIELDS) and all(isinstance(v, str) for v in row.values()) for row in rows)
    return rows


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
# Rows that are near misses of the real layout: the right keys with any values, plus stray keys.
near_rows = st.dictionaries(st.sampled_from(FIELDS + ("question", "extra", "")), json_values, max_size=5)
files = st.sampled_from(["rows.jsonl", "rows.json", "rows.csv", "rows.parquet"])


@FUZZ
@given(name=files, content=st.binary(max_size=400))
def test_arbitrary_bytes_give_rows_or_a_user_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    read_and_validate(path)


@FUZZ
@given(name=st.sampled_from(["rows.jsonl", "rows.json", "rows.csv"]),
       prefix=st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe"]),
       text=st.lists(st.sampled_from(list('{}[]",:;\t\r\n 0aQ\\') + ["Question", "Response", "Complex_CoT",
                                                                         "\u2028", "\x00", "é", "\\ud800"]),
                     max_size=40).map("".join))
def test_structured_looking_text_gives_rows_or_a_user_error(tmp_path, name, prefix, text):
    """Random bytes rarely look like JSON or CSV: text built from their punctuation reaches deeper into the readers."""
    path = tmp_path / name
    path.write_bytes(prefix + text.encode("utf-16-le" if prefix == b"\xff\xfe" else "utf-8"))
    read_and_validate(path)


@FUZZ
@given(value=json_values | st.lists(near_rows, max_size=4))
def test_arbitrary_json_documents_give_rows_or_a_user_error(tmp_path, value):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(value))
    read_and_validate(path)


@FUZZ
@given(rows=st.lists(near_rows | json_values, max_size=5))
def test_arbitrary_json_lines_give_rows_or_a_user_error(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = read_and_validate(path)
    if not all(isinstance(row, dict) for row in rows):
        assert result is None  # a line that is not an object stops the reader
        return
    usable = [r for r in rows if all(isinstance(r.get(f), str) and r[f].strip() for f in FIELDS)]
    assert (result or []) == [{f: r[f] for f in FIELDS} for r in usable]  # exactly the usable rows, in order


@FUZZ
@given(header=st.lists(st.sampled_from(FIELDS + ("x", "")), min_size=1, max_size=5),
       cells=st.lists(st.lists(st.text(max_size=12), max_size=6), max_size=4))
def test_arbitrary_csv_tables_give_rows_or_a_user_error(tmp_path, header, cells):
    import csv
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header] + cells)
    path = tmp_path / "rows.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8", errors="surrogatepass")
    read_and_validate(path)


@pytest.fixture(scope="module")
def parquet_file():
    import pyarrow as pa
    import pyarrow.parquet as pq
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([ROW, {**ROW, "Question": "Second?"}] * 5), buffer)
    return buffer.getvalue()


@FUZZ
@given(data=st.data())
def test_damaged_parquet_gives_rows_or_a_user_error(tmp_path, parquet_file, data):
    """A real Parquet file cut short or with bytes overwritten (a bad download or copy)."""
    content = bytearray(parquet_file[:data.draw(st.integers(0, len(parquet_file)), label="cut at")])
    for position in data.draw(st.lists(st.integers(0, max(len(content) - 1, 0)), max_size=3), label="flips"):
        if content:
            content[position] ^= data.draw(st.integers(1, 255), label="xor")
    path = tmp_path / "rows.parquet"
    path.write_bytes(bytes(content))
    read_and_validate(path)


@FUZZ
@given(columns=st.dictionaries(st.sampled_from(FIELDS + ("extra",)), st.sampled_from(
    [["a", "b"], [1, 2], [1.5, float("nan")], [None, "x"], [["l"], []], [{"k": "v"}, {"k": ""}], [True, False],
     [b"\x00", b"ok"]]), min_size=1))
def test_parquet_columns_of_any_type_give_rows_or_a_user_error(tmp_path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table(columns), path)
    read_and_validate(path)


@pytest.fixture(scope="module")
def script_settings():
    """The real script's constants and their annotations: what --NAME=value is checked against."""
    namespace = runpy.run_path(str(ROOT / "medical_fine_tuning.py"))
    return collect(namespace), namespace.get("__annotations__", {})


setting_values = st.text(max_size=30) | st.sampled_from(
    ["{[]: 1}", "{{}}", "(" * 200, "[" * 1000, "1" * 5000, "1e999", "-0", "None", "nan", "[1, 'a']", "q_proj,",
     "b'x'", "1j", "...", "True", "'dry-run'", "\x00", "1\n2"])


@FUZZ
@given(data=st.data())
def test_any_override_gives_settings_or_a_settings_error(script_settings, data):
    defaults, annotations = script_settings
    names = st.sampled_from(list(defaults)) | st.text(alphabet=string.ascii_letters + "_-=\n", max_size=12)
    argv = data.draw(st.lists(st.builds(lambda n, v: f"--{n}={v}", names, setting_values)
                              | st.text(max_size=20), max_size=3), label="argv")
    try:
        overrides = parse_overrides(argv, defaults, annotations)
    except UserError as error:
        assert "\n" not in str(error) and len(str(error)) < 1500, str(error)
        return
    for name, value in overrides.items():  # what is accepted has a type the setting allows
        allowed = annotations.get(name)
        if allowed is None:
            expected = (float, int) if isinstance(defaults[name], float) else (type(defaults[name]),)
            assert isinstance(value, expected) and (type(value) is not bool or type(defaults[name]) is bool), name
