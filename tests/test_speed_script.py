"""benchmarks/speed.py runs (with --tiny: two small images per case), so the script that measures speed on a
lent GPU or a quiet machine is known to work; its figures are read in docs/performance.md, never asserted.
Every other benchmark script at least starts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "speed.py"


def test_the_speed_benchmark_runs_on_a_tiny_input(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--baseline", "--device", "cpu", "--cache",
                             str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("embedding   512-px photos", "activation  512x768", "activation  full size", "now vs autograd"):
        assert line in result.stdout, result.stdout
    assert "peak RSS +" in result.stdout


@pytest.mark.parametrize("script", sorted(SCRIPT.parent.glob("*.py")), ids=lambda p: p.name)
def test_every_benchmark_script_starts(script):
    """Each script imports what it needs and parses its arguments: a script the docs cite cannot rot unseen
    (an import of a name another script dropped fails here, not months later in a reader's terminal)."""
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage:" in result.stdout
