"""Continual-learning metrics on an accuracy matrix (SPEC section 5); numpy only, no torch.

The accuracy matrix ``R`` is square, ``T x T``, in percent: ``R[i][j]`` is the top-1 accuracy on
the test samples of task ``j`` after training task ``i``. Cells with ``j > i`` (tasks not seen yet)
are empty, stored as NaN. Per-task test sample counts, when given, weight the anytime accuracy.

``read_matrix_csv`` reads sdlora's CSV (written by ``write_matrix_csv``; the ``count`` row is
optional) and the headerless lower-triangular matrix the public code's logs print, with commas
or whitespace, cells above the diagonal empty or absent::

    after_task,task_0,task_1,task_2        90.0
    0,90.0,,                               85.0 80.0
    1,85.0,80.0,                           70.0 75.0 88.0
    2,70.0,75.0,88.0
    count,100,100,50
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from sdlora.files import atomic_path

AccuracyMatrix: TypeAlias = npt.NDArray[np.float64]

FIGURE_DIGITS = 6  # significant digits of a figure written for people (tables, JSON, MLflow)


def tidy(value: object) -> object:
    """``value`` with every float rounded to :data:`FIGURE_DIGITS` significant digits (dicts,
    lists and tuples walked), so 17.374999999999996 is written 17.375 and 72.41458333333334
    72.4146; everything else as it is."""
    if isinstance(value, float | np.floating):
        f = float(value)
        return float(f"{f:.{FIGURE_DIGITS}g}") if math.isfinite(f) else f
    if isinstance(value, dict):
        return {k: tidy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(tidy(v) for v in value)
    return value


"""A validated ``T x T`` float64 array in percent; NaN above the diagonal."""

ArrayLike: TypeAlias = npt.ArrayLike

COUNT_LABEL = "count"
FIRST_HEADER = "after_task"
FORMATS = (
    f"sdlora's CSV with a header '{FIRST_HEADER},task_0,...' and an optional last "
    f"'{COUNT_LABEL}' row, or a headerless lower-triangular matrix, one row per task, "
    "separated by commas or whitespace"
)


def _first(mask: npt.NDArray[np.bool_]) -> tuple[int, ...] | None:
    """Index of the first True cell of ``mask`` in row-major order, or None."""
    hits = np.argwhere(mask)
    return tuple(int(k) for k in hits[0]) if len(hits) else None


def validate_matrix(R: ArrayLike) -> AccuracyMatrix:
    """Return ``R`` as a float64 copy after checking the contract, so metrics never see bad data.

    Checks: 2-D and square with T >= 1; every cell with ``j <= i`` finite and in [0, 100]; every
    cell with ``j > i`` NaN (the task had not been trained yet). Raises ``ValueError`` naming the
    first offending cell (row, column) and what was expected.
    """
    try:
        arr = np.array(R, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"accuracy matrix must be a numeric 2-D array: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(f"accuracy matrix must be 2-D, got {arr.ndim} dimension(s)")
    rows, cols = arr.shape
    if rows != cols:
        raise ValueError(f"accuracy matrix must be square (T x T), got shape {rows} x {cols}")
    if rows == 0:
        raise ValueError("accuracy matrix must have at least one task, got shape 0 x 0")
    lower = np.tri(rows, dtype=bool)
    in_range = (arr >= 0.0) & (arr <= 100.0)  # also False for NaN and +-inf
    hit = _first((lower & ~in_range) | (~lower & ~np.isnan(arr)))
    if hit is None:
        return arr
    i, j = hit
    value = arr[i, j]
    where = f"accuracy matrix cell (row {i}, column {j}) is {value}"
    if j > i:
        raise ValueError(
            f"{where}; expected NaN (empty): task {j} is not trained yet after task {i}"
        )
    if not np.isfinite(value):
        raise ValueError(
            f"{where}; expected a finite accuracy in percent in [0, 100] (cells with column <= "
            "row must be filled)"
        )
    raise ValueError(f"{where}; expected a value in percent in [0, 100]")


def lower_triangular(rows: list[list[float]]) -> npt.NDArray[np.float64]:
    """The T x T matrix of ``rows`` (row i: the i + 1 accuracies after task i), NaN above."""
    n = len(rows)
    R = np.full((n, n), np.nan)
    for i, row in enumerate(rows):
        R[i, : i + 1] = row
    return R


def validate_counts(counts: ArrayLike | None, num_tasks: int) -> npt.NDArray[np.float64]:
    """Return per-task test counts as floats (ones when None), checking length T and ints > 0."""
    if counts is None:
        return np.ones(num_tasks, dtype=np.float64)
    try:
        arr = np.array(counts, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"counts must be a sequence of numbers: {exc}") from exc
    if arr.ndim != 1 or arr.shape[0] != num_tasks:
        raise ValueError(
            f"counts must have one entry per task (length {num_tasks}), got shape {arr.shape}"
        )
    hit = _first(~(np.isfinite(arr) & (arr > 0) & (arr == np.round(arr))))
    if hit is not None:
        (j,) = hit
        raise ValueError(
            f"counts[{j}] (task {j}) is {arr[j]}; expected an integer number of test samples > 0"
        )
    return arr


def anytime_accuracy(R: ArrayLike, counts: ArrayLike | None = None) -> npt.NDArray[np.float64]:
    """Return A_i: accuracy on all test samples of tasks 0..i after task i, for every i.

    A_i = sum_{j<=i} c_j R[i][j] / sum_{j<=i} c_j, with ``c`` the per-task test counts (equal
    weights when ``counts`` is None), so it equals pooled accuracy over the seen test set.
    """
    mat = validate_matrix(R)
    weights = validate_counts(counts, mat.shape[0])
    return np.nan_to_num(mat, nan=0.0) @ weights / np.cumsum(weights)


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
    return float(np.mean(np.nanmax(mat[:, :last], axis=0) - mat[last, :last]))


def backward_transfer(R: ArrayLike) -> float:
    """Return BWT = mean over j < T-1 of (R[T-1][j] - R[j][j]); 0.0 when T == 1.

    Negative values mean accuracy on old tasks dropped after learning new ones. With a single
    task the (empty) mean is defined as 0.0.
    """
    mat = validate_matrix(R)
    last = mat.shape[0] - 1
    if last == 0:
        return 0.0
    return float(np.mean(mat[last, :last] - np.diag(mat)[:last]))


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


def summarize_joint(
    row: ArrayLike, counts: ArrayLike | None = None
) -> dict[str, float | int | list[float] | None]:
    """The metrics of joint training's one row (every task learned at once): final accuracy
    and AAA are its sample-weighted accuracy; forgetting and backward transfer do not apply."""
    acc = np.asarray(row, dtype=np.float64)
    if acc.ndim != 1 or not acc.size or not np.all((acc >= 0) & (acc <= 100)):
        raise ValueError(f"joint accuracy row must be T values in [0, 100], got {row!r}")
    w = validate_counts(counts, acc.size)
    final = float((acc * w).sum() / w.sum())
    return {
        "final_accuracy": final,
        "average_anytime_accuracy": final,
        "forgetting": None,
        "backward_transfer": None,
        "num_tasks": int(acc.size),
        "anytime_accuracy": [final],
    }


Rows: TypeAlias = list[tuple[int, list[str]]]
"""Non-blank lines of a file as (1-based line number, cells)."""


def _shown(text: str, limit: int = 40) -> str:
    """``repr(text)``, cut to about ``limit`` characters for a one-line message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def read_matrix_csv(
    path: str | os.PathLike[str],
) -> tuple[AccuracyMatrix, npt.NDArray[np.int64] | None]:
    """Read an accuracy matrix (and sdlora's optional ``count`` row) from either format.

    A first cell ``after_task`` means sdlora's CSV; a number means the headerless matrix of the
    public logs (counts are then None). Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` naming the file and line for malformed content (bad header, missing or extra
    rows, values above the diagonal, empty or missing cells on or below it, non-numbers, values
    outside [0, 100], bad counts).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: accuracy matrix file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, expected an accuracy matrix file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty file; expected {FORMATS}")

    first = lines[0][1].replace(",", " ").split()
    if first and first[0] == FIRST_HEADER:
        return _read_sdlora_csv(path, [(n, [c.strip() for c in s.split(",")]) for n, s in lines])
    if first and math.isnan(_to_float(first[0])):
        raise ValueError(
            f"{path}, line {lines[0][0]}: bad header {_shown(lines[0][1])}; expected {FORMATS}"
        )
    sep = "," if any("," in s for _, s in lines) else None  # None: split on whitespace
    return _parse_grid(path, [(n, [c.strip() for c in s.split(sep)]) for n, s in lines]), None


def _to_float(text: str) -> float:
    """``float(text)``, or NaN when ``text`` is empty or not a number."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _read_sdlora_csv(path: Path, rows: Rows) -> tuple[AccuracyMatrix, npt.NDArray[np.int64] | None]:
    """Check sdlora's header, row labels and ``count`` row, then parse the matrix cells."""
    header_line, header = rows[0]
    num_tasks = len(header) - 1
    expected = [FIRST_HEADER] + [f"task_{j}" for j in range(num_tasks)]
    if num_tasks < 1 or header != expected:
        shown = ",".join(expected) if num_tasks >= 1 else f"{FIRST_HEADER},task_0,..."
        raise ValueError(
            f"{path}, line {header_line}: bad header {_shown(','.join(header))}; expected {shown!r}"
        )
    body = rows[1:]
    counts = None
    if body and body[-1][1][0] == COUNT_LABEL:
        counts = _parse_count_row(path, *body.pop(), num_tasks)
    labels = [cells[0] for _, cells in body]
    if labels != [str(i) for i in range(num_tasks)]:
        k = next(k for k, label in enumerate([*labels, None]) if label != str(k) or k >= num_tasks)
        line_no, got = (
            (body[k][0], f"matrix row {k} is labelled {_shown(labels[k])}")
            if k < len(labels)
            else (rows[-1][0], f"found {k} matrix row(s)")
        )
        raise ValueError(
            f"{path}, line {line_no}: {got}; expected {num_tasks} row(s) labelled 0 to "
            f"{num_tasks - 1} in order (one per task column of the header), then an optional "
            f"'{COUNT_LABEL}' row"
        )
    return _parse_grid(path, [(n, cells[1:]) for n, cells in body]), counts


def _parse_grid(path: Path, rows: Rows) -> AccuracyMatrix:
    """Row ``i`` of ``rows`` is R[i]: cells 0..i numbers in [0, 100], any later ones empty."""
    num_tasks = len(rows)
    width = max(num_tasks, *(len(cells) for _, cells in rows))
    cells = np.array([c + [""] * (width - len(c)) for _, c in rows], dtype=str)
    lower = np.tri(num_tasks, width, dtype=bool)

    values = np.vectorize(_to_float, otypes=[np.float64])(cells)
    hit = _first((~lower & (cells != "")) | (lower & ~((values >= 0.0) & (values <= 100.0))))
    if hit is None:
        return validate_matrix(values[:, :num_tasks])
    (i, j), text = hit, str(cells[hit])
    where = f"{path}, line {rows[i][0]}, column task_{j}"
    if j > i:
        raise ValueError(
            f"{where}: value {_shown(text)} above the diagonal; row {i} (after task {i}) holds "
            f"at most {i + 1} value(s), the cells after them must be empty or absent"
        )
    if not text:
        raise ValueError(
            f"{where}: empty or missing cell; expected an accuracy in percent in [0, 100] "
            f"(row {i}, column {j} is on or below the diagonal)"
        )
    raise ValueError(
        f"{where}: cell (row {i}, column {j}) is {_shown(text)}; expected a number in [0, 100]"
    )


COUNT_MAX = int(np.iinfo(np.int64).max)  # the count row's dtype (and exact as weights' floats)


def _positive_ints(texts: list[str]) -> tuple[list[int], int | None]:
    """Parse decimal integers in 1 .. COUNT_MAX; also return the index of the first text that
    is not one (a longer text is refused before ``int``, which stops at 4300 digits)."""
    values = [int(t) if t.isascii() and t.isdigit() and len(t) <= 19 else 0 for t in texts]
    bad = [j for j, v in enumerate(values) if not 0 < v <= COUNT_MAX]
    return values, (bad[0] if bad else None)


def _parse_count_row(
    path: Path, line_no: int, cells: list[str], num_tasks: int
) -> npt.NDArray[np.int64]:
    """Parse the optional ``count`` row into positive integers or raise naming file and line."""
    values, bad = _positive_ints(cells[1:])
    if bad is not None or len(values) != num_tasks:
        raise ValueError(
            f"{path}, line {line_no}: bad '{COUNT_LABEL}' row {_shown(','.join(cells))}; expected "
            f"{num_tasks} test sample counts (integers in 1 .. {COUNT_MAX}), one per task"
        )
    return np.array(values, dtype=np.int64)


def write_matrix_csv(
    path: str | os.PathLike[str], R: ArrayLike, counts: ArrayLike | None = None
) -> None:
    """Write ``R`` (and optional counts as a ``count`` row) as sdlora's CSV, atomically.

    The file is written to a temporary file in the same directory and then renamed over
    ``path``, so readers never see a half-written matrix. Values are written with ``repr`` so
    reading them back gives the identical floats.
    """
    mat = validate_matrix(R)
    num_tasks = mat.shape[0]
    count_arr = None if counts is None else validate_counts(counts, num_tasks)
    rows = [[FIRST_HEADER] + [f"task_{j}" for j in range(num_tasks)]]
    rows += [
        [str(i)] + [repr(float(v)) if j <= i else "" for j, v in enumerate(row)]
        for i, row in enumerate(mat)
    ]
    if count_arr is not None:
        rows.append([COUNT_LABEL] + [str(int(c)) for c in count_arr])
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write("".join(",".join(row) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


def parse_counts_arg(text: str) -> list[int]:
    """Parse a comma-separated list of positive integers (the CLI's ``--counts``)."""
    parts = [p.strip() for p in text.split(",")]
    values, bad = _positive_ints(parts)
    if bad is not None:
        raise ValueError(
            f"counts entry {bad} is {_shown(parts[bad])}; expected a comma-separated list of "
            f"integers in 1 .. {COUNT_MAX}"
        )
    return values


__all__ = [
    "AccuracyMatrix",
    "anytime_accuracy",
    "average_anytime_accuracy",
    "backward_transfer",
    "final_accuracy",
    "forgetting",
    "forgetting_so_far",
    "lower_triangular",
    "parse_counts_arg",
    "read_matrix_csv",
    "summarize",
    "summarize_joint",
    "validate_counts",
    "validate_matrix",
    "write_matrix_csv",
]
