"""Every example runs top to bottom (they are jupytext percent scripts)."""

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parents[1] / "examples").glob("*.py"))


SMOKE = {f"{m}_SMOKE": "1" for m in ("FUNBAT", "GPHM", "KROSBL", "SSVI", "MULTVAE", "STATESPACE")}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(path):
    """Top to bottom in each example's small smoke mode (``<MODEL>_SMOKE=1``)."""
    env = {**os.environ, "TQDM_DISABLE": "1", **SMOKE}
    proc = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RMSE" in proc.stdout or proc.stdout.strip()
