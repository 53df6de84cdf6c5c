"""Every code snippet of docs/funbat.md and the FunBaT docstring example runs as written."""

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bayeslr.models import FunBaT

DOC = Path(__file__).resolve().parents[2] / "docs" / "funbat.md"


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_page_has_snippets():
    assert len(_blocks(DOC.read_text())) >= 2


@pytest.mark.slow  # fits FunBaT with its defaults on a year of ozone, and a small NUTS run
@pytest.mark.parametrize("i", range(len(_blocks(DOC.read_text()))))
def test_docs_snippet_runs(i):
    ns: dict = {}
    exec(compile(_blocks(DOC.read_text())[i], f"docs/funbat.md[{i}]", "exec"), ns)
    _check_fitted(ns["post"])  # every snippet ends in a fitted posterior
    if "mom" in ns:  # the usage snippet: closed-form moments with intervals at the test entries
        mom, test = ns["mom"], ns["test"]
        assert len(mom) == len(test) and np.all(np.isfinite(mom.to_numpy()))
        assert np.all(mom["lower"] < mom["mean"]) and np.all(mom["mean"] < mom["upper"])
        assert ns["draws"].shape[-1] == len(test) and np.isfinite(ns["lpd"])


def _check_fitted(post):
    draws = [np.asarray(v) for v in post.samples.values()]
    assert draws and all(np.all(np.isfinite(v)) for v in draws)


def test_class_docstring_example_runs():
    doc = FunBaT.__doc__
    body = doc[doc.index("Example::") + len("Example::") : doc.index("    Args:")]
    code = textwrap.dedent(body).strip("\n")
    ns: dict = {}
    exec(compile(code, "FunBaT.__doc__", "exec"), ns)
    post, test = ns["post"], ns["test"]
    _check_fitted(post)
    assert post.extra["mode_ranks"] == (3, 3, 3)
    rmse = np.sqrt(np.mean((post.moments(test)["mean"] - test["value"]) ** 2))
    assert rmse < test["value"].std()  # better than predicting the mean
