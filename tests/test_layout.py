"""The layout by stage: docs/architecture.md names every module of the tool, and no module grows past the
size one reader can hold."""

import os
import re

from conftest import ROOT

MAX_LINES = 420  # "about 400 lines" (the brief): a module past it has more than one job


def _tool_modules() -> set[str]:
    found = {name for name in os.listdir(ROOT) if name.endswith(".py")}
    for folder, dirs, files in os.walk(os.path.join(ROOT, "image_learner")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found.update(os.path.relpath(os.path.join(folder, f), ROOT) for f in files
                     if f.endswith(".py") and f != "__init__.py")
    return found


def _documented() -> set[str]:
    text = open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8").read()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    named = set()
    for row in rows:
        cells = row.split("|")[2]  # the module column
        paths = re.findall(r"`([^`]+\.py)`", cells)
        folder = None
        for path in paths:  # "`a/b/x.py`, `y.py`": y.py lives beside x.py
            if "/" in path:
                folder = os.path.dirname(path)
                named.add(path)
            else:
                named.add(os.path.join(folder, path) if folder else path)
    return named


def test_architecture_doc_names_exactly_the_tool_modules():
    assert _documented() == _tool_modules()


def test_no_module_is_longer_than_about_400_lines():
    long = {m: n for m in _tool_modules() if (n := sum(1 for _ in open(os.path.join(ROOT, m)))) > MAX_LINES}
    assert not long, long
