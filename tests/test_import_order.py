"""Import order: ArviZ first must not break NumPyro under bayeslr (see bayeslr/_compat.py)."""

import subprocess
import sys

SCRIPT = """
import arviz  # registers a lazy numpyro stand-in
import bayeslr
import numpyro

numpyro.factor("f", 0.0)  # raised AttributeError before the fix
print(hasattr(numpyro.distributions, "distribution"))
"""


def test_arviz_imported_first_leaves_numpyro_whole():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"
