"""Bad source data gets an error naming the file, column and rows; every violation is reported at once."""

import io

import pandas as pd
import pytest

from kfrelease.data.ingest import read_source
from kfrelease.data.spec import load_spec, parse_spec
from kfrelease.data.validate import validate
from kfrelease.demo.data import demo_batches
from kfrelease.errors import ConfigError, DataValidationError

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
    out = validate(read_source(good_csv().to_csv(index=False).encode(), WHERE), SPEC)
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


def test_unparseable_csv():
    with pytest.raises(DataValidationError, match=f"{WHERE}: not a readable CSV file.*line 3"):
        read_source(b'a,b\n1,2\n3,4,5,6\n"unterminated\n', WHERE)


def test_corrupt_parquet():
    with pytest.raises(DataValidationError, match="not a readable Parquet file"):
        read_source(b"PAR1 this is not parquet", "s3://raw/diabetes/b.parquet")


def test_unknown_file_type():
    with pytest.raises(DataValidationError, match="must end in .csv or .parquet"):
        read_source(b"x", "s3://raw/diabetes/b.xlsx")


def test_spec_errors_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="missing key"):
        parse_spec("name: x\n")
    with pytest.raises(ConfigError, match="dtype 'float'"):
        parse_spec("name: x\nsource: {prefix: x}\ncolumns: {a: {dtype: float}}\n")
    with pytest.raises(ConfigError, match="no dataset spec named 'nope'"):
        load_spec("nope")
    with pytest.raises(ConfigError, match="id_column 'id' is not one of the declared columns"):
        parse_spec("name: x\nsource: {prefix: x}\nid_column: id\ncolumns: {a: {dtype: float64}}\n")
