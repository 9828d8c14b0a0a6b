"""Everything a block prints, its child processes included, goes to the log file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sdlora.ops.console import redirect_output, tail

SCRIPT = """
import os, subprocess, sys
from sdlora.ops.console import redirect_output
with redirect_output(sys.argv[1]) as console:
    print("from python")
    os.write(2, b"from fd 2\\n")
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child\\\\n')"])
    print("for the user", file=console)
print("after")
"""


def test_output_of_this_process_and_its_children_goes_to_the_file(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "stage.log"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, check=True
    )
    assert log.read_text().splitlines() == ["from python", "from fd 2", "child"]
    assert (done.stdout, done.stderr) == ("after\n", "for the user\n")


def test_fds_come_back_when_the_block_raises(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RuntimeError), redirect_output(tmp_path / "x.log"):
        raise RuntimeError("boom")
    print("back")
    assert capfd.readouterr().out == "back\n"


def test_tail(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_text("".join(f"{i}\n" for i in range(50)))
    assert tail(path, 3) == "47\n48\n49"
    assert tail(tmp_path / "missing.log") == ""
