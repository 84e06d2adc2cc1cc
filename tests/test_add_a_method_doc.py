"""docs/add_a_method.md runs as written: its Python blocks train, evaluate and predict with a new method."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from fewshot.methods import METHODS

DOC = Path(__file__).resolve().parents[1] / "docs" / "add_a_method.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


@pytest.mark.slow
def test_add_a_method_guide_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 3
    # A block that starts with "# name.py" is a file to save; the others run in order, like one script.
    files = [b for b in blocks if re.match(r"# \w+\.py\n", b)]
    assert files and len([line for line in files[0].splitlines() if line.strip()]) < 50
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = dict(METHODS)  # restored afterwards: the registration stays in this test
    try:
        for block in files:
            (tmp_path / block.splitlines()[0][2:]).write_text(block)
        namespace: dict = {"__name__": "add_a_method_doc"}
        for block in blocks:
            if block not in files:
                exec(compile(block, str(DOC), "exec"), namespace)
    finally:
        METHODS.clear()
        METHODS.update(registry)
        sys.modules.pop("softknn", None)
    out = capsys.readouterr().out
    assert (tmp_path / "runs" / "softknn" / "best.pt").is_file()
    match = re.search(r"5-way 5-shot: ([\d.]+)% ±", out)
    assert match and float(match.group(1)) > 20  # above chance (20%) after a few episodes
    assert "5-way 1-shot, 200 episodes" in out
    predicted = [line.split()[:2] for line in out.splitlines() if line.startswith("query/")]
    assert len(predicted) == 3 and all(p[1].startswith("glyph") for p in predicted)
