"""The fast conversion (Arrow kernels for values in the plain form of their dtype) accepts exactly what the
exact rules accept, with the same value, and leaves every refusal to them: held equal on generated text."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kfrelease.data.dtypes import WHITESPACE, _convert_exact, convert
from kfrelease.data.spec import DTYPES

PIECES = [
    "0",
    "1",
    "7",
    "9",
    "00",
    "12",
    "-",
    "+",
    ".",
    "e",
    "E",
    "5",
    "0.0",
    "2.5",
    "1e999",
    "2569614270",  # after "8e": an exponent pandas' to_numeric crashed the process on (text_to_numbers)
    "1e-400",
    "nan",
    "NA",
    "true",
    "FALSE",
    "True",
    "x",
    "٣",
    "İ",
    "2024-03-01",
    "T12:00:00",
    "Z",
    "+02:00",
    "99999999999999999999",
    "9223372036854775807",
    "9223372036854775808",
    "1_0",
    "0x1f",
    ",",
] + [" ", "\t", "\xa0", "\u2003", "\x1c", ""]
texts = st.lists(st.lists(st.sampled_from(PIECES), max_size=4).map("".join), min_size=1, max_size=40)


def same(fast, exact) -> None:
    assert [r for r, _ in fast.problems] == [r for r, _ in exact.problems]
    for (_, a), (_, b) in zip(fast.problems, exact.problems):
        assert np.array_equal(a, b)
    assert np.array_equal(fast.missing, exact.missing)
    pd.testing.assert_series_equal(fast.values, exact.values, check_dtype=True)


@pytest.mark.parametrize("dtype", [d for d in DTYPES])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=texts)
def test_the_fast_conversion_equals_the_exact_rules(dtype, values):
    for storage in ("pyarrow", "python"):
        s = pd.Series(values, dtype=pd.StringDtype(storage))
        same(convert(s, dtype), _convert_exact(s, dtype))


def test_plain_values_take_the_fast_path_with_exact_values():
    s = pd.Series(["12", "-3", "+4", "7.000", "0.1", "1e5", " 2.5 ", "NA", ""], dtype=pd.StringDtype("pyarrow"))
    floats = convert(s, "float64")
    assert floats.values.tolist()[:7] == [12.0, -3.0, 4.0, 7.0, 0.1, 100000.0, 2.5] and floats.missing[-2:].all()
    ints = convert(s, "int64")
    assert [r for r, _ in ints.problems] == ["not a whole number (expected int64)", "wrong type (expected int64)"]
    assert ints.values[:4].tolist() == [12, -3, 4, 7]


def test_a_number_with_an_exponent_and_spaces_around_it_is_read_not_a_crash():
    """ " 1e5" and "1e999 " are in the float form the fast path matches by pattern (spaces allowed), but Arrow's cast
    refuses spaces: the publish stopped with pyarrow's ArrowInvalid and a traceback (found by the property above)."""
    for storage in ("pyarrow", "python"):
        s = pd.Series([" 1e5", "2.5E-3\t", "1e999 ", "3"], dtype=pd.StringDtype(storage))
        floats = convert(s, "float64")
        same(floats, _convert_exact(s, "float64"))
        assert floats.values.tolist()[:2] == [100000.0, 0.0025] and floats.values.isna().tolist()[2]
        assert [r for r, _ in floats.problems] == ["wrong type (expected float64)"]


def test_whitespace_is_pythons():
    assert set(WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}


def test_a_long_exponent_is_a_wrong_value_not_a_crash():
    """pandas' to_numeric kills the process on "8e2569614270" (a signed 32-bit exponent overflow in its C parser): a
    CSV cell like that took the whole publish down with no message. Run in a child process, so that the crash shows
    as this test failing rather than as a lost worker."""
    import subprocess
    import sys

    script = (
        "import pandas as pd\n"
        "from kfrelease.data.dtypes import convert\n"
        "for storage in ('python', 'pyarrow'):\n"
        "    s = pd.Series(['8e2569614270', '1e0000000001', '1.5', '1e-99999999999'], dtype=pd.StringDtype(storage))\n"
        "    c = convert(s, 'float64')\n"
        "    print(c.values.tolist(), [(rule, mask.tolist()) for rule, mask in c.problems])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-500:]}"
    wrong = "[('wrong type (expected float64)', [True, False, False, False])]"
    assert done.stdout.splitlines() == [f"[nan, 10.0, 1.5, 0.0] {wrong}"] * 2, done.stdout
