"""Continual-learning metrics on an accuracy matrix (SPEC section 5); numpy only, no torch.

The accuracy matrix ``R`` is square, ``T x T``, in percent: ``R[i][j]`` is the top-1 accuracy on
the test samples of task ``j`` after training task ``i``. Cells with ``j > i`` (tasks not seen yet)
are empty, stored as NaN. Per-task test sample counts, when given, weight the anytime accuracy.

CSV format (``read_matrix_csv`` / ``write_matrix_csv``)::

    after_task,task_0,task_1,task_2
    0,90.0,,
    1,85.0,80.0,
    2,70.0,75.0,88.0
    count,100,100,50

The last ``count`` row is optional; cells above the diagonal are empty strings.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from sdlora.atomic import atomic_path

AccuracyMatrix: TypeAlias = npt.NDArray[np.float64]
"""A validated ``T x T`` float64 array in percent; NaN above the diagonal."""

ArrayLike: TypeAlias = npt.ArrayLike

COUNT_LABEL = "count"
FIRST_HEADER = "after_task"


def validate_matrix(R: ArrayLike) -> AccuracyMatrix:
    """Return ``R`` as a float64 copy after checking the contract, so metrics never see bad data.

    Checks: 2-D and square with T >= 1; every cell with ``j <= i`` finite and in [0, 100]; every
    cell with ``j > i`` NaN (the task had not been trained yet). Raises ``ValueError`` naming the
    offending cell (row, column) and what was expected.
    """
    try:
        arr = np.array(R, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"accuracy matrix must be a numeric 2-D array: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(f"accuracy matrix must be 2-D, got {arr.ndim} dimension(s)")
    rows, cols = arr.shape
    if rows != cols:
        raise ValueError(f"accuracy matrix must be square (T x T), got shape {rows} x {cols}")
    if rows == 0:
        raise ValueError("accuracy matrix must have at least one task, got shape 0 x 0")
    for i in range(rows):
        for j in range(cols):
            value = arr[i, j]
            if j <= i:
                if not math.isfinite(value):
                    raise ValueError(
                        f"accuracy matrix cell (row {i}, column {j}) is {value}; expected a "
                        "finite accuracy in percent in [0, 100] (cells with column <= row "
                        "must be filled)"
                    )
                if not 0.0 <= value <= 100.0:
                    raise ValueError(
                        f"accuracy matrix cell (row {i}, column {j}) is {value}; expected a "
                        "value in percent in [0, 100]"
                    )
            elif not math.isnan(value):
                raise ValueError(
                    f"accuracy matrix cell (row {i}, column {j}) is {value}; expected NaN "
                    f"(empty): task {j} is not trained yet after task {i}"
                )
    return arr


def validate_counts(counts: ArrayLike | None, num_tasks: int) -> npt.NDArray[np.float64]:
    """Return per-task test counts as floats (ones when None), checking length T and ints > 0."""
    if counts is None:
        return np.ones(num_tasks, dtype=np.float64)
    try:
        arr = np.array(counts, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"counts must be a sequence of numbers: {exc}") from exc
    if arr.ndim != 1 or arr.shape[0] != num_tasks:
        raise ValueError(
            f"counts must have one entry per task (length {num_tasks}), got shape {arr.shape}"
        )
    for j, value in enumerate(arr):
        if not (math.isfinite(value) and value > 0 and float(value).is_integer()):
            raise ValueError(
                f"counts[{j}] (task {j}) is {value}; expected an integer number of test samples > 0"
            )
    return arr


def anytime_accuracy(R: ArrayLike, counts: ArrayLike | None = None) -> npt.NDArray[np.float64]:
    """Return A_i: accuracy on all test samples of tasks 0..i after task i, for every i.

    A_i = sum_{j<=i} c_j R[i][j] / sum_{j<=i} c_j, with ``c`` the per-task test counts (equal
    weights when ``counts`` is None), so it equals pooled accuracy over the seen test set.
    """
    mat = validate_matrix(R)
    weights = validate_counts(counts, mat.shape[0])
    out = np.empty(mat.shape[0], dtype=np.float64)
    for i in range(mat.shape[0]):
        w = weights[: i + 1]
        out[i] = float(np.dot(mat[i, : i + 1], w) / w.sum())
    return out


def final_accuracy(R: ArrayLike, counts: ArrayLike | None = None) -> float:
    """Return A_{T-1}, the accuracy on all tasks' test samples after the last task."""
    return float(anytime_accuracy(R, counts)[-1])


def average_anytime_accuracy(R: ArrayLike, counts: ArrayLike | None = None) -> float:
    """Return AAA = mean over i of A_i (the public code's "Average Accuracy")."""
    return float(np.mean(anytime_accuracy(R, counts)))


def forgetting(R: ArrayLike) -> float:
    """Return mean over j < T-1 of (max_{i in [j, T-1]} R[i][j] - R[T-1][j]); 0.0 when T == 1.

    With a single task there is no earlier task to forget, so the (empty) mean is defined as 0.0.
    The result is >= 0 because the maximum includes the final row.
    """
    mat = validate_matrix(R)
    last = mat.shape[0] - 1
    if last == 0:
        return 0.0
    drops = [float(np.max(mat[j:, j]) - mat[last, j]) for j in range(last)]
    return float(np.mean(drops))


def backward_transfer(R: ArrayLike) -> float:
    """Return BWT = mean over j < T-1 of (R[T-1][j] - R[j][j]); 0.0 when T == 1.

    Negative values mean accuracy on old tasks dropped after learning new ones. With a single
    task the (empty) mean is defined as 0.0.
    """
    mat = validate_matrix(R)
    last = mat.shape[0] - 1
    if last == 0:
        return 0.0
    return float(np.mean([mat[last, j] - mat[j, j] for j in range(last)]))


def forgetting_so_far(R: ArrayLike, upto: int) -> float:
    """Return forgetting on the sub-matrix R[:upto+1, :upto+1], for logging it after each task."""
    mat = validate_matrix(R)
    num_tasks = mat.shape[0]
    if isinstance(upto, bool) or not isinstance(upto, int | np.integer):
        raise ValueError(f"upto must be an integer task index, got {upto!r}")
    if not 0 <= upto < num_tasks:
        raise ValueError(f"upto must be a task index in [0, {num_tasks - 1}], got {upto}")
    return forgetting(mat[: upto + 1, : upto + 1])


def summarize(
    R: ArrayLike, counts: ArrayLike | None = None
) -> dict[str, float | int | list[float]]:
    """Return all section-5 accuracy metrics in one JSON-ready dict (plus A_i as a list)."""
    mat = validate_matrix(R)
    a_i = anytime_accuracy(mat, counts)
    return {
        "final_accuracy": float(a_i[-1]),
        "average_anytime_accuracy": float(np.mean(a_i)),
        "forgetting": forgetting(mat),
        "backward_transfer": backward_transfer(mat),
        "num_tasks": int(mat.shape[0]),
        "anytime_accuracy": [float(a) for a in a_i],
    }


def _parse_float(text: str, where: str, what: str) -> float:
    """Parse one CSV cell as a float or raise ValueError naming its location."""
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: {what} is {text!r}; expected a number") from None


def read_matrix_csv(
    path: str | os.PathLike[str],
) -> tuple[AccuracyMatrix, npt.NDArray[np.int64] | None]:
    """Read an accuracy matrix (and optional ``count`` row) from CSV, validating every cell.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and line
    for malformed content (bad header, ragged or missing rows, non-numeric cells, values above
    the diagonal, empty cells on or below it, values outside [0, 100], bad counts).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: accuracy matrix file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, expected an accuracy matrix CSV file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc.reason})") from None

    lines: list[tuple[int, list[str]]] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            cells = [c.strip() for c in row]
            if not any(cells):
                continue  # blank line (e.g. trailing newline)
            lines.append((reader.line_num, cells))
    except csv.Error as exc:
        raise ValueError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None

    if not lines:
        raise ValueError(f"{path}: empty file; expected a header row '{FIRST_HEADER},task_0,...'")

    header_line, header = lines[0]
    num_tasks = len(header) - 1
    expected_header = [FIRST_HEADER] + [f"task_{j}" for j in range(num_tasks)]
    if num_tasks < 1 or header != expected_header:
        shown = ",".join(expected_header) if num_tasks >= 1 else f"{FIRST_HEADER},task_0,..."
        raise ValueError(
            f"{path}, line {header_line}: bad header {','.join(header)!r}; expected {shown!r}"
        )

    body = lines[1:]
    counts: npt.NDArray[np.int64] | None = None
    if body and body[-1][1][0] == COUNT_LABEL:
        count_line, count_cells = body.pop()
        counts = _parse_counts(path, count_line, count_cells, num_tasks)

    matrix = np.full((num_tasks, num_tasks), np.nan, dtype=np.float64)
    for i in range(num_tasks):
        if i >= len(body):
            last_line = count_line if counts is not None else lines[-1][0]
            raise ValueError(
                f"{path}, line {last_line}: missing row for after_task {i}; expected "
                f"{num_tasks} matrix rows (one per task) after the header, found {len(body)}"
            )
        line_no, cells = body[i]
        if cells[0] == COUNT_LABEL:
            raise ValueError(
                f"{path}, line {line_no}: '{COUNT_LABEL}' row must be the last row; matrix row "
                f"for after_task {i} is missing"
            )
        if len(cells) != num_tasks + 1:
            raise ValueError(
                f"{path}, line {line_no}: row has {len(cells)} cells; expected {num_tasks + 1} "
                f"(after_task plus {num_tasks} task columns, like the header)"
            )
        if cells[0] != str(i):
            raise ValueError(
                f"{path}, line {line_no}: first cell is {cells[0]!r}; expected after_task {i} "
                "(rows must be in order 0, 1, ...)"
            )
        for j in range(num_tasks):
            cell = cells[j + 1]
            where = f"{path}, line {line_no}, column task_{j}"
            if j > i:
                if cell != "":
                    raise ValueError(
                        f"{where}: value {cell!r} above the diagonal; expected an empty cell "
                        f"(task {j} is not trained yet after task {i})"
                    )
                continue
            if cell == "":
                raise ValueError(
                    f"{where}: empty cell; expected an accuracy in percent in [0, 100] "
                    f"(row {i}, column {j} is on or below the diagonal)"
                )
            value = _parse_float(cell, where, f"cell (row {i}, column {j})")
            if not (math.isfinite(value) and 0.0 <= value <= 100.0):
                raise ValueError(
                    f"{where}: cell (row {i}, column {j}) is {cell!r}; expected an accuracy in "
                    "percent in [0, 100]"
                )
            matrix[i, j] = value

    if len(body) > num_tasks:
        line_no, cells = body[num_tasks]
        if cells[0] == COUNT_LABEL:
            raise ValueError(f"{path}, line {line_no}: '{COUNT_LABEL}' row must be the last row")
        raise ValueError(
            f"{path}, line {line_no}: extra row; expected exactly {num_tasks} matrix rows "
            f"(the header has {num_tasks} task columns), optionally followed by a "
            f"'{COUNT_LABEL}' row"
        )
    return validate_matrix(matrix), counts


def _parse_counts(
    path: Path, line_no: int, cells: list[str], num_tasks: int
) -> npt.NDArray[np.int64]:
    """Parse the optional ``count`` row into positive integers or raise naming file and line."""
    if len(cells) != num_tasks + 1:
        raise ValueError(
            f"{path}, line {line_no}: '{COUNT_LABEL}' row has {len(cells)} cells; expected "
            f"{num_tasks + 1} ('{COUNT_LABEL}' plus one test sample count per task)"
        )
    out = np.empty(num_tasks, dtype=np.int64)
    for j, cell in enumerate(cells[1:]):
        try:
            value = int(cell)
        except ValueError:
            value = 0
        if value <= 0:
            raise ValueError(
                f"{path}, line {line_no}, column task_{j}: count is {cell!r}; expected an "
                "integer number of test samples > 0"
            )
        out[j] = value
    return out


def _format_value(value: float) -> str:
    """Format one accuracy so that reading it back gives the identical float."""
    return repr(float(value))


def write_matrix_csv(
    path: str | os.PathLike[str], R: ArrayLike, counts: ArrayLike | None = None
) -> None:
    """Write ``R`` (and optional counts as a ``count`` row) to CSV atomically via os.replace.

    The file is written to a temporary file in the same directory and then renamed over
    ``path``, so readers never see a half-written matrix.
    """
    mat = validate_matrix(R)
    num_tasks = mat.shape[0]
    count_arr = None if counts is None else validate_counts(counts, num_tasks)

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([FIRST_HEADER] + [f"task_{j}" for j in range(num_tasks)])
    for i in range(num_tasks):
        row = [str(i)]
        row += [_format_value(mat[i, j]) if j <= i else "" for j in range(num_tasks)]
        writer.writerow(row)
    if count_arr is not None:
        writer.writerow([COUNT_LABEL] + [str(int(c)) for c in count_arr])

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(buf.getvalue())
        handle.flush()
        os.fsync(handle.fileno())


def parse_counts_arg(text: str) -> list[int]:
    """Parse a comma-separated list of positive integers (the CLI's ``--counts``)."""
    parts = [p.strip() for p in text.split(",")]
    out: list[int] = []
    for j, part in enumerate(parts):
        try:
            value = int(part)
        except ValueError:
            value = 0
        if value <= 0:
            raise ValueError(
                f"counts entry {j} is {part!r}; expected a comma-separated list of integers > 0"
            )
        out.append(value)
    return out


__all__ = [
    "AccuracyMatrix",
    "anytime_accuracy",
    "average_anytime_accuracy",
    "backward_transfer",
    "final_accuracy",
    "forgetting",
    "forgetting_so_far",
    "parse_counts_arg",
    "read_matrix_csv",
    "summarize",
    "validate_counts",
    "validate_matrix",
    "write_matrix_csv",
]
