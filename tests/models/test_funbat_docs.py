"""Every code snippet of docs/funbat.md and the FunBaT docstring example runs as written."""

import re
import textwrap
from pathlib import Path

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
    exec(compile(_blocks(DOC.read_text())[i], f"docs/funbat.md[{i}]", "exec"), {})


def test_class_docstring_example_runs():
    doc = FunBaT.__doc__
    body = doc[doc.index("Example::") + len("Example::") : doc.index("    Args:")]
    code = textwrap.dedent(body).strip("\n")
    exec(compile(code, "FunBaT.__doc__", "exec"), {})
