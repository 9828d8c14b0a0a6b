"""Tests for sdlora.core.metrics and the ``metrics`` CLI subcommand, on hand-computed matrices."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdlora.cli import main
from sdlora.core import metrics
from sdlora.core.metrics import (
    anytime_accuracy,
    average_anytime_accuracy,
    backward_transfer,
    final_accuracy,
    forgetting,
    forgetting_so_far,
    lower_triangular,
    read_matrix_csv,
    summarize,
    validate_counts,
    validate_matrix,
    write_matrix_csv,
)

NAN = math.nan

# R[i][j]: after task i, accuracy on task j. Task 0 peaks after task 1 (90 > 80 on the
# diagonal), so forgetting must use the column max, not the diagonal.
R3 = [
    [80.0, NAN, NAN],
    [90.0, 70.0, NAN],
    [60.0, 65.0, 50.0],
]
COUNTS3 = [100, 300, 100]

# Unweighted A_i:
#   A_0 = 80
#   A_1 = (90 + 70) / 2 = 80
#   A_2 = (60 + 65 + 50) / 3 = 175 / 3 = 58.333...
# AAA = (80 + 80 + 175/3) / 3 = 655 / 9 = 72.777...
A3_EQUAL = [80.0, 80.0, 175.0 / 3.0]
AAA3_EQUAL = 655.0 / 9.0
# Weighted by counts [100, 300, 100]:
#   A_0 = 80
#   A_1 = (90*100 + 70*300) / 400 = 30000 / 400 = 75
#   A_2 = (60*100 + 65*300 + 50*100) / 500 = 30500 / 500 = 61
# AAA = (80 + 75 + 61) / 3 = 72
A3_WEIGHTED = [80.0, 75.0, 61.0]
AAA3_WEIGHTED = 72.0
# Forgetting: j=0: max(80, 90, 60) - 60 = 30; j=1: max(70, 65) - 65 = 5; mean = 17.5
#   (using the diagonal instead of the max would give (20 + 5) / 2 = 12.5).
FORGETTING3 = 17.5
# BWT: j=0: 60 - 80 = -20; j=1: 65 - 70 = -5; mean = -12.5
BWT3 = -12.5

# Second matrix for forgetting_so_far, where the prefix forgetting is not zero.
R3B = [
    [80.0, NAN, NAN],
    [50.0, 70.0, NAN],
    [60.0, 40.0, 90.0],
]
# upto=0: 0 (one task). upto=1: j=0: max(80, 50) - 50 = 30 -> 30.
# upto=2 (full): j=0: max(80, 50, 60) - 60 = 20; j=1: max(70, 40) - 40 = 30; mean 25.


# --------------------------------------------------------------------------- metrics


def test_anytime_accuracy_equal_weights() -> None:
    np.testing.assert_allclose(anytime_accuracy(R3), A3_EQUAL, rtol=0, atol=1e-12)


def test_anytime_accuracy_sample_weighted() -> None:
    np.testing.assert_allclose(anytime_accuracy(R3, COUNTS3), A3_WEIGHTED, rtol=0, atol=1e-12)


def test_equal_counts_match_no_counts() -> None:
    np.testing.assert_allclose(anytime_accuracy(R3, [7, 7, 7]), A3_EQUAL, atol=1e-12)


def test_final_and_average_anytime_accuracy() -> None:
    assert final_accuracy(R3) == pytest.approx(175.0 / 3.0)
    assert final_accuracy(R3, COUNTS3) == pytest.approx(61.0)
    assert average_anytime_accuracy(R3) == pytest.approx(AAA3_EQUAL)
    assert average_anytime_accuracy(R3, COUNTS3) == pytest.approx(AAA3_WEIGHTED)


def test_forgetting_uses_column_max_not_diagonal() -> None:
    assert forgetting(R3) == pytest.approx(FORGETTING3)
    assert forgetting(R3B) == pytest.approx(25.0)


def test_backward_transfer() -> None:
    assert backward_transfer(R3) == pytest.approx(BWT3)
    # R3B: j=0: 60 - 80 = -20; j=1: 40 - 70 = -30; mean -25
    assert backward_transfer(R3B) == pytest.approx(-25.0)


def test_positive_backward_transfer_and_zero_forgetting() -> None:
    # Accuracy on task 0 rises from 50 to 70: BWT = +20, forgetting = 70 - 70 = 0.
    r = [[50.0, NAN], [70.0, 60.0]]
    assert backward_transfer(r) == pytest.approx(20.0)
    assert forgetting(r) == 0.0


def test_single_task_is_defined() -> None:
    r = [[42.5]]
    assert forgetting(r) == 0.0
    assert backward_transfer(r) == 0.0
    assert final_accuracy(r) == 42.5
    assert average_anytime_accuracy(r) == 42.5
    assert forgetting_so_far(r, 0) == 0.0


def test_forgetting_so_far() -> None:
    assert forgetting_so_far(R3B, 0) == 0.0
    assert forgetting_so_far(R3B, 1) == pytest.approx(30.0)
    assert forgetting_so_far(R3B, 2) == pytest.approx(25.0)
    assert forgetting_so_far(R3, 2) == pytest.approx(FORGETTING3)
    # R3 prefix [[80], [90, 70]]: max(80, 90) - 90 = 0.
    assert forgetting_so_far(R3, 1) == 0.0


@pytest.mark.parametrize("upto", [-1, 3])
def test_forgetting_so_far_rejects_bad_index(upto: int) -> None:
    with pytest.raises(ValueError, match=r"upto must be a task index in \[0, 2\]"):
        forgetting_so_far(R3, upto)


def test_summarize() -> None:
    s = summarize(R3, COUNTS3)
    assert set(s) == {
        "final_accuracy",
        "average_anytime_accuracy",
        "forgetting",
        "backward_transfer",
        "num_tasks",
        "anytime_accuracy",
    }
    assert s["final_accuracy"] == pytest.approx(61.0)
    assert s["average_anytime_accuracy"] == pytest.approx(72.0)
    assert s["forgetting"] == pytest.approx(FORGETTING3)
    assert s["backward_transfer"] == pytest.approx(BWT3)
    assert s["num_tasks"] == 3
    assert s["anytime_accuracy"] == pytest.approx(A3_WEIGHTED)
    assert isinstance(s["anytime_accuracy"], list)
    json.dumps(s)  # JSON-ready


def test_metrics_do_not_mutate_input() -> None:
    arr = np.array(R3)
    before = arr.copy()
    summarize(arr, COUNTS3)
    np.testing.assert_array_equal(arr, before)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("matrix", "pattern"),
    [
        ([[80.0, NAN], [NAN, 70.0]], r"\(row 1, column 0\).*finite"),
        ([[80.0, NAN], [math.inf, 70.0]], r"\(row 1, column 0\).*finite"),
        ([[80.0, NAN], [90.0, 100.5]], r"\(row 1, column 1\).*\[0, 100\]"),
        ([[-0.1, NAN], [90.0, 70.0]], r"\(row 0, column 0\).*\[0, 100\]"),
        ([[80.0, 10.0], [90.0, 70.0]], r"\(row 0, column 1\).*expected NaN"),
        ([[80.0, NAN, NAN], [90.0, 70.0, NAN]], r"square.*2 x 3"),
        ([80.0, 70.0], r"2-D"),
        (np.zeros((0, 0)), r"at least one task"),
        ([["a", NAN], [1.0, 2.0]], r"numeric"),
    ],
)
def test_validate_matrix_errors(matrix: object, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        validate_matrix(matrix)


def test_validate_matrix_names_the_first_bad_cell() -> None:
    # Several bad cells: the message names the first one in row-major order.
    bad = [[80.0, NAN, NAN], [90.0, 101.0, 5.0], [-1.0, NAN, 70.0]]
    with pytest.raises(ValueError, match=r"\(row 1, column 1\) is 101.0;.*\[0, 100\]"):
        validate_matrix(bad)
    bad[1][1] = 70.0
    with pytest.raises(ValueError, match=r"\(row 1, column 2\) is 5.0; expected NaN"):
        validate_matrix(bad)
    bad[1][2] = NAN
    with pytest.raises(ValueError, match=r"\(row 2, column 0\) is -1.0"):
        validate_matrix(bad)
    bad[2][0] = 0.0
    with pytest.raises(ValueError, match=r"\(row 2, column 1\) is nan;.*finite"):
        validate_matrix(bad)


def test_validate_matrix_accepts_bounds() -> None:
    out = validate_matrix([[0.0, NAN], [100.0, 0.0]])
    assert out.dtype == np.float64
    assert out.shape == (2, 2)


@pytest.mark.parametrize(
    ("counts", "pattern"),
    [
        ([100, 100], r"length 3"),
        ([100, 0, 100], r"counts\[1\].*> 0"),
        ([100, -5, 100], r"counts\[1\]"),
        ([100, 2.5, 100], r"counts\[1\].*integer"),
        ([[100, 100, 100]], r"length 3"),
        ([100, 10**400, 100], r"counts must be a sequence of numbers: int too large"),
    ],
)
def test_counts_errors(counts: object, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        anytime_accuracy(R3, counts)


def test_validate_counts_names_the_first_bad_entry() -> None:
    with pytest.raises(ValueError, match=r"counts\[1\] \(task 1\) is nan"):
        validate_counts([5, NAN, 0, 1.5], 4)
    np.testing.assert_array_equal(validate_counts([5, 6.0], 2), [5.0, 6.0])


def test_validate_counts_default_is_equal_weights() -> None:
    np.testing.assert_array_equal(validate_counts(None, 3), [1.0, 1.0, 1.0])


# --------------------------------------------------------------------------- CSV


def test_write_matrix_csv_format(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    write_matrix_csv(path, R3, COUNTS3)
    assert path.read_text(encoding="utf-8").splitlines() == [
        "after_task,task_0,task_1,task_2",
        "0,80.0,,",
        "1,90.0,70.0,",
        "2,60.0,65.0,50.0",
        "count,100,300,100",
    ]


def test_csv_round_trip_with_counts(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    r = np.array(R3)
    r[2, 1] = 65.123456789012345  # needs full precision to survive
    write_matrix_csv(path, r, COUNTS3)
    back, counts = read_matrix_csv(path)
    np.testing.assert_array_equal(back, r)  # NaNs compare equal here
    assert counts is not None
    assert counts.tolist() == COUNTS3
    assert back[2, 1] == r[2, 1]


def test_csv_round_trip_without_counts(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    write_matrix_csv(path, R3)
    back, counts = read_matrix_csv(path)
    assert counts is None
    np.testing.assert_array_equal(back, np.array(R3))
    assert "count" not in path.read_text(encoding="utf-8")


def test_write_is_atomic_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("old content\n", encoding="utf-8")
    write_matrix_csv(path, R3B)
    back, _ = read_matrix_csv(path)
    np.testing.assert_array_equal(back, np.array(R3B))
    assert sorted(os.listdir(tmp_path)) == ["r.csv"]  # no temp file left behind


def test_write_invalid_matrix_leaves_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    write_matrix_csv(path, R3)
    before = path.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match=r"\(row 0, column 0\)"):
        write_matrix_csv(path, [[120.0]])
    assert path.read_text(encoding="utf-8") == before
    assert sorted(os.listdir(tmp_path)) == ["r.csv"]


def test_read_tolerates_whitespace_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(b"after_task, task_0 ,task_1\r\n0, 50 ,\r\n1,40,60\r\n\r\n")
    back, counts = read_matrix_csv(path)
    assert counts is None
    np.testing.assert_array_equal(back, [[50.0, NAN], [40.0, 60.0]])


# The public code's logs: no header, row i = after task i, upper cells empty or absent.
LOG_R3 = [[90.0, NAN, NAN], [85.0, 80.0, NAN], [70.0, 75.0, 88.0]]


@pytest.mark.parametrize(
    "text",
    [
        "90.0\n85.0 80.0\n70.0 75.0 88.0\n",  # whitespace, upper cells absent
        "  90.0\t\n85.0\t80.0\n\n70.0   75.0  88.0",  # tabs, runs of blanks, blank line, no EOL
        "90.0,,\n85.0,80.0,\n70.0,75.0,88.0\n",  # commas, upper cells empty
        "90.0\n85.0,80.0\n70.0,75.0,88.0\n",  # commas, upper cells absent
        "90.0, ,\r\n85.0, 80.0,\r\n70.0, 75.0, 88.0,\r\n",  # blanks around cells, CRLF, extra
        "\ufeff90\n85 80\n70 75 88\n",  # byte order mark, integers
    ],
)
def test_read_public_log_matrix(tmp_path: Path, text: str) -> None:
    path = tmp_path / "log.txt"
    path.write_bytes(text.encode("utf-8"))
    back, counts = read_matrix_csv(path)
    assert counts is None
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, LOG_R3)


def test_read_public_log_single_task(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text("42.5\n", encoding="utf-8")
    back, _ = read_matrix_csv(path)
    np.testing.assert_array_equal(back, [[42.5]])


def test_both_formats_give_the_same_metrics(tmp_path: Path) -> None:
    ours = tmp_path / "r.csv"
    write_matrix_csv(ours, R3)
    log = tmp_path / "log.txt"
    log.write_text("80\n90 70\n60 65 50\n", encoding="utf-8")
    from_csv, _ = read_matrix_csv(ours)
    from_log, _ = read_matrix_csv(log)
    np.testing.assert_array_equal(from_log, from_csv)
    assert summarize(from_log) == summarize(from_csv)


GOOD_HEADER = "after_task,task_0,task_1\n"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        # non-numeric cell
        (GOOD_HEADER + "0,80,\n1,abc,70\n", r"line 3, column task_0.*'abc'.*expected a number"),
        # missing rows, before the end or before the count row
        (GOOD_HEADER + "0,80,\n", r"line 2: found 1 matrix row\(s\); expected 2 row\(s\)"),
        (GOOD_HEADER + "0,80,\ncount,10,10\n", r"line 3: found 1 matrix row"),
        # value in the upper triangle
        (GOOD_HEADER + "0,80,75\n1,90,70\n", r"line 2, column task_1.*above the diagonal"),
        # a row longer than the header
        (GOOD_HEADER + "0,80,\n1,90,70,5\n", r"line 3, column task_2.*above the diagonal"),
        # empty or absent cell on/below the diagonal
        (GOOD_HEADER + "0,80,\n1,,70\n", r"line 3, column task_0: empty or missing cell"),
        (GOOD_HEADER + "0,80,\n1,90\n", r"line 3, column task_1: empty or missing cell"),
        # value out of range
        (GOOD_HEADER + "0,80,\n1,90,170\n", r"line 3, column task_1.*'170'.*\[0, 100\]"),
        (GOOD_HEADER + "0,80,\n1,nan,70\n", r"line 3, column task_0.*'nan'.*\[0, 100\]"),
        (GOOD_HEADER + "0,80,\n1,-inf,70\n", r"line 3, column task_0.*'-inf'.*\[0, 100\]"),
        # rows out of order / wrong label
        (GOOD_HEADER + "1,80,\n0,90,70\n", r"line 2: matrix row 0 is labelled '1'"),
        # extra row
        (GOOD_HEADER + "0,80,\n1,90,70\n2,1,1\n", r"line 4: matrix row 2 is labelled '2'"),
        # count row not last
        (GOOD_HEADER + "0,80,\ncount,1,1\n1,90,70\n", r"line 3: .*'count'.*then an optional"),
        # bad counts
        (GOOD_HEADER + "0,80,\n1,90,70\ncount,10,0\n", r"line 4: bad 'count' row 'count,10,0'"),
        (GOOD_HEADER + "0,80,\n1,90,70\ncount,10,2.5\n", r"line 4: bad 'count' row.*integers"),
        (GOOD_HEADER + "0,80,\n1,90,70\ncount,10\n", r"line 4: bad 'count' row.*expected 2"),
        (GOOD_HEADER + "0,80,\n1,90,70\ncount,10,10,10\n", r"line 4: bad 'count' row"),
        # header problems
        ("after_task,task_0,task_2\n0,80,\n1,90,70\n", r"line 1: bad header"),
        ("after_task\n", r"line 1: bad header"),
        ("task,task_0\n0,80\n", r"line 1: bad header 'task,task_0'.*headerless"),
        ("", r"empty file; expected sdlora's CSV.*or a headerless"),
        ("\n  \n", r"empty file"),
        # public-log format: a row longer than its index allows
        ("90\n85 80 70\n70 75 88\n", r"line 2, column task_2: value '70' above the diagonal"),
        ("90,80\n85,80\n", r"line 1, column task_1: value '80' above the diagonal"),
        ("90\n85 80\n70 75 88 60\n", r"line 3, column task_3: value '60' above the diagonal"),
        # public-log format: a cell missing on or below the diagonal
        ("90\n85\n70 75 88\n", r"line 2, column task_1: empty or missing cell"),
        ("90,,\n85,,\n70,75,88\n", r"line 2, column task_1: empty or missing cell"),
        ("90,,\n,80,\n70,75,88\n", r"line 2, column task_0: empty or missing cell"),
        # public-log format: non-numbers and values outside [0, 100]
        ("90\n85 8o\n", r"line 2, column task_1: cell \(row 1, column 1\) is '8o'"),
        ("90\n85;80\n", r"line 2, column task_0.*'85;80'.*expected a number"),
        ("90\n85 80\n70 100.5 88\n", r"line 3, column task_1.*'100.5'.*\[0, 100\]"),
        ("90\n-1 80\n", r"line 2, column task_0.*'-1'"),
        # commas and blanks mixed inside one row
        ("90\n85 80\n70,75 88\n", r"line 2, column task_0.*'85 80'"),
    ],
)
def test_read_malformed_csv(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=pattern) as info:
        read_matrix_csv(path)
    assert str(path) in str(info.value)  # names the file


def test_read_reports_the_first_bad_cell(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("90\n85 80\n70 x 120\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 3, column task_1.*'x'"):
        read_matrix_csv(path)


def test_read_directory_and_binary(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory"):
        read_matrix_csv(tmp_path)
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ValueError, match=r"bin\.csv: not a UTF-8 text file"):
        read_matrix_csv(path)


def test_read_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match=r"nope\.csv.*not found"):
        read_matrix_csv(path)


# --------------------------------------------------------------------------- CLI


def _write(tmp_path: Path, counts: list[int] | None = None) -> Path:
    path = tmp_path / "matrix.csv"
    write_matrix_csv(path, R3, counts)
    return path


def test_cli_metrics_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path)
    assert main(["metrics", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)
    assert data["num_tasks"] == 3
    assert data["final_accuracy"] == pytest.approx(175.0 / 3.0)
    assert data["average_anytime_accuracy"] == pytest.approx(AAA3_EQUAL)
    assert data["forgetting"] == pytest.approx(FORGETTING3)
    assert data["backward_transfer"] == pytest.approx(BWT3)
    assert data["anytime_accuracy"] == pytest.approx(A3_EQUAL)
    assert out.startswith('{\n  "')  # indent 2


def test_cli_uses_counts_from_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, COUNTS3)
    assert main(["metrics", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["anytime_accuracy"] == pytest.approx(A3_WEIGHTED)


def test_cli_counts_flag_overrides_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, [1, 1, 1])
    assert main(["metrics", str(path), "--counts", "100,300,100"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["final_accuracy"] == pytest.approx(61.0)
    assert data["average_anytime_accuracy"] == pytest.approx(72.0)


def test_cli_bad_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(GOOD_HEADER + "0,80,\n1,abc,70\n", encoding="utf-8")
    assert main(["metrics", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "line 3" in err and "bad.csv" in err
    assert "Traceback" not in err


def test_cli_metrics_public_log_matrix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.txt"
    path.write_text("80.0\n90.0 70.0\n60.0 65.0 50.0\n", encoding="utf-8")
    assert main(["metrics", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)
    assert data["num_tasks"] == 3
    assert data["anytime_accuracy"] == pytest.approx(A3_EQUAL)
    assert data["forgetting"] == pytest.approx(FORGETTING3)
    assert data["backward_transfer"] == pytest.approx(BWT3)


def test_cli_public_log_with_counts_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "log.txt"
    path.write_text("80,,\n90,70,\n60,65,50\n", encoding="utf-8")
    assert main(["metrics", str(path), "--counts", "100,300,100"]) == 0
    assert json.loads(capsys.readouterr().out)["anytime_accuracy"] == pytest.approx(A3_WEIGHTED)


def test_cli_bad_public_log_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad_log.txt"
    path.write_text("80\n90 70 5\n", encoding="utf-8")
    assert main(["metrics", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert str(path) in err and "line 2" in err and "above the diagonal" in err
    assert "Traceback" not in err


def test_cli_metrics_help_names_both_formats(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["metrics", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "after_task,task_0,..." in text and "'count' row" in text
    assert "no header" in text and "lower-triangular" in text and "whitespace" in text
    assert main(["--help"]) == 0
    assert "public log" in " ".join(capsys.readouterr().out.split())


def test_cli_missing_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["metrics", str(tmp_path / "missing.csv")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "missing.csv" in err and "not found" in err


def test_cli_counts_wrong_length_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path)
    assert main(["metrics", str(path), "--counts", "100,100"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "--counts" in err and "length 3" in err


@pytest.mark.parametrize("bad", ["100,x,100", "100,0,100", "", "100,,100"])
def test_cli_counts_unparsable_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    path = _write(tmp_path)
    assert main(["metrics", str(path), "--counts", bad]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "--counts" in err


def test_cli_requires_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    path = _write(tmp_path, COUNTS3)
    ok = subprocess.run(
        [sys.executable, "-m", "sdlora", "metrics", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["final_accuracy"] == pytest.approx(61.0)

    bad = subprocess.run(
        [sys.executable, "-m", "sdlora", "metrics", str(tmp_path / "missing.csv")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert "Traceback" not in bad.stderr


def test_lower_triangular_from_rows() -> None:
    R = lower_triangular([[90.0], [85.0, 80.0]])
    np.testing.assert_array_equal(R, np.array([[90.0, np.nan], [85.0, 80.0]]))


def test_joint_row_gives_its_weighted_accuracy_and_no_forgetting() -> None:
    from sdlora.core.metrics import summarize_joint

    s = summarize_joint([80.0, 60.0], [30, 10])
    assert s["final_accuracy"] == s["average_anytime_accuracy"] == 75.0
    assert s["forgetting"] is None and s["backward_transfer"] is None and s["num_tasks"] == 2
    with pytest.raises(ValueError, match="joint accuracy row"):
        summarize_joint([120.0])


# ---- counts too large for the arrays they go into (issue 19: one line, never a traceback) ----

HUGE = ["9223372036854775808", "1" + "0" * 400, "9" * 5000]  # int64 max + 1, > float max, > 4300


@pytest.mark.parametrize("count", HUGE)
def test_a_count_row_too_large_names_its_line(tmp_path: Path, count: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(f"after_task,task_0\n0,80\ncount,{count}\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        read_matrix_csv(path)
    assert str(info.value).startswith(f"{path}, line 3: bad 'count' row 'count,{count[:10]}")
    assert "integers in 1 .. 9223372036854775807" in str(info.value)


@pytest.mark.parametrize("count", HUGE)
def test_cli_counts_too_large_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], count: str
) -> None:
    path = _write(tmp_path)
    assert main(["metrics", str(path), "--counts", f"100,{count},100"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert f"Invalid value for '--counts': counts entry 1 is '{count[:10]}" in err
    assert "integers in 1 .. 9223372036854775807" in err


def test_a_matrix_value_too_large_for_a_float_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"must be a numeric 2-D array: int too large"):
        validate_matrix([[10**400]])


def test_tidy_rounds_figures_for_people_and_leaves_the_rest() -> None:
    """17.374999999999996 reads 17.375 in tables, JSON and MLflow; ints, text and NaN stay."""
    got = metrics.tidy(
        {"a": 17.374999999999996, "b": [72.41458333333334, np.float64(0.0010591613924779357)],
         "n": 238185, "s": "x", "nan": float("nan"), "t": (1.0000001, True)}
    )  # fmt: skip
    assert got["a"] == 17.375 and got["b"] == [72.4146, 0.00105916]
    assert got["n"] == 238185 and got["s"] == "x" and math.isnan(got["nan"])
    assert got["t"] == (1.0, True) and type(got["b"][1]) is float
