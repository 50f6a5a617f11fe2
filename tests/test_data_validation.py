"""Bad source data gets an error naming the file, column and rows; every violation is reported at once."""

import io
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pydantic import Field

from kfrelease.data import spec as data_spec
from kfrelease.data import validate as validation
from kfrelease.data.ingest import read_source
from kfrelease.data.spec import DatasetSpec, load_spec, parse_spec
from kfrelease.data.validate import validate
from kfrelease.demo.data import demo_batches
from kfrelease.errors import ConfigError, DataValidationError
from kfrelease.specs import parse

ROOT = Path(__file__).resolve().parents[1]
SPEC = load_spec("diabetes")
WHERE = "s3://raw/diabetes/batch-9.csv"


def good_csv(rows: int = 60) -> pd.DataFrame:
    return demo_batches()[0].head(rows).copy()


def check(df: pd.DataFrame) -> DataValidationError:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    rows = read_source(buf.getvalue().encode(), WHERE)
    with pytest.raises(DataValidationError) as info:
        validate(rows, SPEC)
    return info.value


def test_good_batch_passes_with_declared_dtypes():
    out = validate(read_source(good_csv().to_csv(index=False).encode(), WHERE), SPEC).valid
    assert len(out) == 60 and str(out["patient_id"].dtype) == "int64" and str(out["bmi"].dtype) == "float64"


def test_missing_column():
    err = check(good_csv().drop(columns=["bmi"]))
    assert "column 'bmi': column is missing" in str(err)


def test_wrong_dtype_names_file_line_and_value():
    df = good_csv().astype({"age": object})
    df.loc[4, "age"] = "fifty"
    err = str(check(df))
    assert "column 'age': wrong type (expected float64)" in err and f"{WHERE} line 6" in err and "'fifty'" in err


def test_nan_where_not_allowed():
    df = good_csv()
    df.loc[2, "s5"] = float("nan")
    err = str(check(df))
    assert "column 's5': missing value" in err and f"{WHERE} line 4" in err


def test_out_of_range_value():
    df = good_csv()
    df.loc[7, "bp"] = 900.0
    err = str(check(df))
    assert "column 'bp': above the maximum 200" in err and f"{WHERE} line 9" in err and "900.0" in err


def test_duplicate_ids():
    df = good_csv()
    df.loc[10, "patient_id"] = df.loc[3, "patient_id"]
    err = str(check(df))
    assert "column 'patient_id': duplicate value" in err and f"{WHERE} line 5" in err and f"{WHERE} line 12" in err


def test_too_few_rows():
    assert "at least 50 rows required, got 10" in str(check(good_csv(10)))


def test_undeclared_column():
    df = good_csv()
    df["shoe_size"] = 42
    assert "column 'shoe_size': column is not declared" in str(check(df))


def test_all_violations_are_reported_at_once():
    df = good_csv()
    df.loc[1, "bp"] = -5.0
    df.loc[2, "s5"] = float("nan")
    df = df.drop(columns=["s6"])
    err = check(df)
    assert len(err.violations) == 3
    assert "3 problem(s)" in str(err) and "nothing was published" in str(err)


def test_empty_file():
    with pytest.raises(DataValidationError, match=f"{WHERE}: the file is empty"):
        read_source(b"", WHERE)


def test_header_only_file():
    with pytest.raises(DataValidationError, match="header but no rows"):
        read_source(b"patient_id,age\n", WHERE)


def test_a_latin1_file_is_refused_naming_the_byte_its_line_and_the_encoding():
    text = "patient_id,city\n1,Paris\n2,Montréal\n".encode("latin-1")
    with pytest.raises(DataValidationError) as info:
        read_source(text, WHERE)
    assert str(info.value).startswith(
        f"{WHERE} line 3: byte 0xe9 at offset 31 is not UTF-8 (the file looks Latin-1/Windows-1252 encoded, where it "
        "is 'é' in '2,Montréal'); save the file as UTF-8"
    )
    with pytest.raises(DataValidationError, match=f"{WHERE} line 1: byte 0xe9 at offset 8 is not UTF-8"):
        read_source("patient_é,city\n1,x\n".encode("latin-1"), WHERE)
    with pytest.raises(DataValidationError, match="UTF-16 byte order mark: it is UTF-16"):
        read_source("a,b\n1,2\n".encode("utf-16"), WHERE)


def test_a_duplicated_header_is_refused_naming_the_column_and_its_fields():
    with pytest.raises(DataValidationError) as info:
        read_source(b"patient_id,bmi,age,bmi\n1,2,3,4\n", WHERE)
    assert str(info.value) == (
        f"{WHERE}: the header names column 'bmi' 2 times (fields 2 and 4); give every column its own name, then "
        "upload the file again"
    )


def csv_text(df: pd.DataFrame) -> str:
    return df.to_csv(index=False)


def check_text(text: str, spec=SPEC) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        validate(read_source(text.encode(), WHERE), spec)
    return info.value


def test_a_fraction_in_an_integer_column_is_refused_not_truncated():
    lines = csv_text(good_csv()).splitlines()
    lines[5] = "2.5" + lines[5][lines[5].index(",") :]  # patient_id of data row 5 (file line 6)
    err = str(check_text("\n".join(lines) + "\n"))
    assert "column 'patient_id': not a whole number (expected int64): 1 row(s) of 60" in err
    assert f"{WHERE} line 6 (value '2.5')" in err


def test_an_integer_beyond_int64_is_refused():
    lines = csv_text(good_csv()).splitlines()
    lines[3] = "9223372036854775808" + lines[3][lines[3].index(",") :]
    err = str(check_text("\n".join(lines) + "\n"))
    assert (
        "column 'patient_id': out of the int64 range" in err and f"{WHERE} line 4 (value '9223372036854775808')" in err
    )


def test_a_whole_number_written_as_a_decimal_converts_exactly():
    lines = csv_text(good_csv()).splitlines()
    lines[1] = "7001.0" + lines[1][lines[1].index(",") :]
    out = validate(read_source(("\n".join(lines) + "\n").encode(), WHERE), SPEC).valid
    assert out["patient_id"].dtype == "int64" and out["patient_id"].iloc[0] == 7001


def test_a_fraction_in_an_integer_parquet_column_is_refused():
    df = good_csv().astype({"patient_id": "float64"})
    df.loc[2, "patient_id"] = 3.5
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    with pytest.raises(DataValidationError, match=r"not a whole number.*b\.parquet line 3 \(value 3\.5\)"):
        validate(read_source(buf.getvalue(), "s3://raw/diabetes/b.parquet"), SPEC)


def test_a_date_that_does_not_parse_is_refused():
    spec = parse_spec(
        "name: visits\nsource: {prefix: visits}\ncolumns:\n  id: {dtype: int64}\n  seen: {dtype: 'datetime64[ns]'}\n"
    )
    err = str(check_text("id,seen\n1,2024-03-01\n2,2024-02-30\n3,2024-03-02T10:00:00\n4,yesterday\n", spec))
    assert "column 'seen': not a date/time" in err and "2 row(s) of 4" in err
    assert f"{WHERE} line 3 (value '2024-02-30'); {WHERE} line 5 (value 'yesterday')" in err
    ok = validate(read_source(b"id,seen\n1,2024-03-01\n2,2024-03-02T10:00:00\n", WHERE), spec).valid
    assert str(ok["seen"].dtype) == "datetime64[ns]" and str(ok["seen"].iloc[1]) == "2024-03-02 10:00:00"


def test_ragged_lines_are_reported_as_such_in_line_order():
    lines = csv_text(good_csv()).splitlines()
    for i in (50, 12, 30):  # out of order on purpose
        lines[i] += ",extra"
    lines[40] = lines[40].rsplit(",", 2)[0]
    err = check_text("\n".join(lines) + "\n")
    text = str(err)
    assert "wrong number of fields (ragged line): 4 row(s) of 60" in text
    assert (
        f"{WHERE} line 13 (13 fields, expected 12); {WHERE} line 31 (13 fields, expected 12); "
        f"{WHERE} line 41 (10 fields, expected 12); {WHERE} line 51 (13 fields, expected 12)"
    ) in text
    assert "wrong type" not in text and "missing value" not in text  # a ragged row is not blamed on its values
    assert len(err.violations) == 1


def test_lines_are_sorted_and_each_problem_counts_all_its_rows():
    df = good_csv()
    for i in (40, 3, 22, 9, 51, 17, 30):
        df.loc[i, "bp"] = 900.0
    err = str(check(df))
    assert "column 'bp': above the maximum 200: 7 row(s) of 60, at " in err
    assert f"{WHERE} line 5 (value '900.0'); {WHERE} line 11 " in err and "and 2 more" in err
    named = [int(x) for x in re.findall(r"line (\d+) \(value '900", err)]
    assert named == sorted(named) == [5, 11, 19, 24, 32]


def quarantining(spec=SPEC):
    doc = yaml.safe_load(spec.text)
    doc["on_invalid"] = "quarantine"
    return parse_spec(yaml.safe_dump(doc))


def test_quarantine_keeps_exactly_the_valid_rows_and_says_why_for_the_rest():
    df = good_csv()
    df.loc[4, "bp"] = 900.0
    df.loc[7, "s5"] = float("nan")
    df.loc[11, "patient_id"] = df.loc[12, "patient_id"]  # both rows of the duplicate id are refused
    lines = csv_text(df).splitlines()
    lines[20] += ",extra"
    lines[30] = "3.5" + lines[30][lines[30].index(",") :]
    checked = validate(read_source(("\n".join(lines) + "\n").encode(), WHERE), quarantining())
    refused = {4, 7, 11, 12, 19, 29}  # data rows (0-based); file line = row + 2
    expected = df.drop(index=sorted(refused)).reset_index(drop=True)
    got = checked.valid.drop(columns=["__source", "__line"])
    pd.testing.assert_frame_equal(got, expected.astype({"patient_id": "int64"}), check_dtype=True)
    assert checked.valid["__line"].tolist() == [i + 2 for i in range(60) if i not in refused]
    q = checked.invalid
    assert q["line"].tolist() == sorted(i + 2 for i in refused)
    reasons = dict(zip(q["line"], q["reason"]))
    assert reasons[6] == "column 'bp': above the maximum 200 (value '900.0')"
    assert reasons[9].startswith("column 's5': missing value")
    assert "duplicate value" in reasons[13] and "duplicate value" in reasons[14]
    assert reasons[21] == "wrong number of fields (ragged line): 13 fields, expected 12"
    assert q.loc[q["line"] == 21, "text"].iloc[0] == lines[20]
    assert reasons[31] == "column 'patient_id': not a whole number (expected int64) (value '3.5')"
    assert (q["source"] == WHERE).all() and q.loc[q["line"] == 6, "bp"].iloc[0] == "900.0"


def test_quarantine_still_rejects_a_problem_of_the_whole_dataset():
    with pytest.raises(DataValidationError, match="column 'bmi': column is missing"):
        validate(read_source(csv_text(good_csv().drop(columns=["bmi"])).encode(), WHERE), quarantining())
    df = good_csv()
    df.loc[:20, "bp"] = 900.0
    with pytest.raises(DataValidationError, match="at least 50 rows required, got 39 valid of 60"):
        validate(read_source(csv_text(df).encode(), WHERE), quarantining())


def test_sources_that_differ_in_a_refused_value_get_different_version_ids():
    from kfrelease.data.publish import version_digest

    def digest(text: str) -> str:
        checked = validate(read_source(text.encode(), WHERE), quarantining())
        return version_digest(checked.valid.drop(columns=["__source", "__line"]), checked.invalid)

    lines = csv_text(good_csv()).splitlines()
    two = "\n".join(lines[:5] + ["2" + lines[5][lines[5].index(",") :]] + lines[6:]) + "\n"
    fraction = "\n".join(lines[:5] + ["2.5" + lines[5][lines[5].index(",") :]] + lines[6:]) + "\n"
    assert digest(two) != digest(fraction)
    assert digest(two) == digest(two)


def test_an_optional_column_missing_from_a_source_is_empty_not_an_error():
    doc = yaml.safe_load(SPEC.text)
    doc["columns"]["glucose"] = {"dtype": "float64", "nullable": True}
    out = validate(read_source(csv_text(good_csv()).encode(), WHERE), parse_spec(yaml.safe_dump(doc))).valid
    assert out["glucose"].isna().all() and len(out) == 60


def test_corrupt_parquet():
    with pytest.raises(DataValidationError, match="not a readable Parquet file"):
        read_source(b"PAR1 this is not parquet", "s3://raw/diabetes/b.parquet")


def test_unknown_file_type():
    with pytest.raises(DataValidationError, match="must end in .csv, .csv.gz or .parquet"):
        read_source(b"x", "s3://raw/diabetes/b.xlsx")


def test_spec_errors_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="missing key"):
        parse_spec("name: x\n")
    with pytest.raises(ConfigError, match="dtype 'float'"):
        parse_spec("name: x\nsource: {prefix: x}\ncolumns: {a: {dtype: float}}\n")
    with pytest.raises(ConfigError, match="no dataset spec named 'nope'"):
        load_spec("nope")
    with pytest.raises(ConfigError, match="on_invalid 'drop' is unknown; use one of reject, quarantine"):
        parse_spec("name: x\nsource: {prefix: x}\non_invalid: drop\ncolumns: {a: {dtype: float64}}\n")
    with pytest.raises(ConfigError, match="id_column 'id' is not one of the declared columns"):
        parse_spec("name: x\nsource: {prefix: x}\nid_column: id\ncolumns: {a: {dtype: float64}}\n")


def test_validating_a_local_file_needs_no_stack_and_no_credentials(tmp_path):
    """`kfrelease data validate --file` in a fresh shell: an empty KFRELEASE_HOME, no S3 endpoint, no stack."""
    import os
    import subprocess
    import sys

    from click.testing import CliRunner

    from kfrelease.cli import cli

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KFRELEASE_", "AWS_"))}
    env.update(KFRELEASE_HOME=str(home), COLUMNS="200")
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good_csv().to_csv(good, index=False)
    broken = good_csv()
    broken.loc[3, "age"] = 500
    broken.to_csv(bad, index=False)
    spec_file = tmp_path / "diabetes.yaml"
    spec_file.write_text(SPEC.text)

    ok = subprocess.run(  # a dataset name: its packaged spec, and it says so
        [sys.executable, "-m", "kfrelease.cli", "data", "validate", "--file", str(good), "--dataset", "diabetes"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "valid: 60 rows match dataset spec 'diabetes'" in ok.stdout
    assert "validating against the packaged spec 'diabetes'" in ok.stderr and "no credentials" in ok.stderr
    # a spec file: the object store is not even asked (in-process, same empty home)
    unset = {k: None for k in os.environ if k.startswith(("KFRELEASE_", "AWS_"))}
    refused = CliRunner(env={**unset, "KFRELEASE_HOME": str(home)}).invoke(
        cli, ["data", "validate", "--file", str(bad), "--dataset", str(spec_file)]
    )
    assert refused.exit_code == 1 and "column 'age': above the maximum 120" in refused.output, refused.output
    assert "value '500.0'" in refused.output and "packaged" not in refused.output
    assert list(home.iterdir()) == []  # nothing generated, nothing started


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            b"patient_id,bmi,age,bmi\n1,2,3,4\n",
            (
                "error: {file}: the header names column 'bmi' 2 times (fields 2 and 4); give every column its own name, "
                "then upload the file again"
            ),
        ),
        (
            "patient_id,city\n1,Paris\n2,Montréal\n".encode("latin-1"),
            (
                "error: {file} line 3: byte 0xe9 at offset 31 is not UTF-8 (the file looks Latin-1/Windows-1252 encoded, "
                "where it is 'é' in '2,Montréal'); save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > "
                "out.csv`) and upload it again"
            ),
        ),
    ],
    ids=["duplicated-header", "latin-1"],
)
def test_a_bad_file_is_one_line_on_the_command_line(tmp_path, content, expected):
    """The two files that ended in a traceback (issue 26): one line naming the file and what to do, exit 1."""
    from click.testing import CliRunner

    from kfrelease.cli import cli

    spec = tmp_path / "diabetes.yaml"
    spec.write_text(SPEC.text)
    bad = tmp_path / "batch.csv"
    bad.write_bytes(content)
    for args in (
        ["data", "validate", "--file", str(bad), "--dataset", str(spec)],
        ["data", "init", "--from", str(bad)],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        assert result.output == expected.format(file=bad) + "\n"


def test_the_readme_example_of_a_new_data_rule_is_one_declaration(monkeypatch):
    """README, "Adding a data rule is one declaration plus its use": the key it shows, added to ``ColumnSpec``, and
    the rule, added to ``VALUE_RULES``, make a dataset spec accept ``max_length``, refuse a bad one in one line, and
    refuse (or quarantine) the rows that break it, named like every other problem, with no other edit."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Adding a data rule is one declaration plus its use", 1)[1].split("\n### ", 1)[0]
    key, rule = (block.split("```", 1)[0] for block in section.split("```python\n")[1:3])
    spec_text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    problem, refused = re.findall(r"`(column 'name': [^`]+|people\.yaml: [^`]+)`", section.replace("\n", " "))
    namespace = vars(data_spec).copy()
    exec(f"class Column(ColumnSpec):\n{key}", namespace)  # noqa: S102 - the README's own example
    column = namespace["Column"]

    class Dataset(DatasetSpec):
        columns: dict[str, column] = Field(min_length=1, description="Each column name mapped to its declaration.")

    monkeypatch.setattr(
        validation, "VALUE_RULES", (*validation.VALUE_RULES, eval(rule.strip().rstrip(","), vars(validation)))
    )

    spec = parse(Dataset, spec_text, "people.yaml", "a mapping")
    assert spec.column("name").max_length == 8
    with pytest.raises(ConfigError) as err:
        parse(Dataset, spec_text.replace("max_length: 8", "max_length: 0"), "people.yaml", "a mapping")
    assert str(err.value) == " ".join(refused.split())
    rows = read_source(b"id,name\n1,Ada\n2,Christopher\n3,Grace\n", "s3://raw/people/batch-1.csv")
    with pytest.raises(DataValidationError) as err:
        validate(rows, spec)
    assert " ".join(problem.split()) in str(err.value)
    checked = validate(rows, spec.with_changes(on_invalid="quarantine"))
    assert list(checked.valid["name"]) == ["Ada", "Grace"]
    assert list(checked.invalid["reason"]) == ["column 'name': longer than 8 characters (value 'Christopher')"]
