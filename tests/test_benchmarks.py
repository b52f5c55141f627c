"""The benchmark scripts import the harness's code by its module paths, and no CI machine has the
GPU `gpu_check.py` is for: its CPU smoke run keeps it importable and working as the code moves."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_its_cpu_smoke_section():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-smoke"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "no CUDA device: gpu_check needs one" in done.stdout + done.stderr
