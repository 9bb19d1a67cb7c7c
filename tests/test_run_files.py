"""The modules' import graph, and one run's files: scratch folder, output directory, leftovers."""

import ast
import os
import subprocess
import sys

import pytest

from image_learner import run_files
from conftest import ROOT
from image_learner.errors import InputError

def _module_names() -> list[str]:
    """Every module of the tool as an importable dotted name: the root's entry modules and the package's."""
    names = [name[:-3] for name in os.listdir(ROOT) if name.endswith(".py")]
    for folder, dirs, files in os.walk(os.path.join(ROOT, "image_learner")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        package = os.path.relpath(folder, ROOT).replace(os.sep, ".")
        names += [package if f == "__init__.py" else f"{package}.{f[:-3]}" for f in files if f.endswith(".py")]
    return sorted(names)


MODULES = _module_names()


def _path(module: str) -> str:
    base = os.path.join(ROOT, *module.split("."))
    return os.path.join(base, "__init__.py") if os.path.isdir(base) else base + ".py"


def _imports(module: str) -> set[str]:
    """The tool's modules that ``module`` imports anywhere (also inside functions); importing a package's
    module counts as importing that module, not its package's __init__ (which holds only a docstring)."""
    with open(_path(module), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found & set(MODULES) - {module}


def test_package_inits_import_nothing_of_the_tool():
    for module in MODULES:
        if _path(module).endswith("__init__.py"):
            assert not _imports(module), module


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, …, a], or None."""
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_module_import_graph_has_no_cycle():
    assert {"image_learner.pipeline", "image_learner.model.predictor", "image_learner.run_files",
            "image_learner_cli", "split_utils", "report_builder"} <= set(MODULES)
    graph = {module: _imports(module) for module in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check itself works


def test_every_module_imports_in_a_fresh_interpreter(tmp_path):
    """With no cycle (above), the order does not matter: one interpreter for all keeps this fast."""
    code = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
    result = subprocess.run([sys.executable, "-c", code, *MODULES], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT, "TMPDIR": str(tmp_path)}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_scratch_folder_has_an_unguessable_name_and_is_removed_on_success_and_failure(tmp_path):
    with run_files.scratch_tempdir(str(tmp_path)) as first, run_files.scratch_tempdir(str(tmp_path)) as second:
        for work in (first, second):
            assert os.path.dirname(work) == str(tmp_path)
            assert os.path.basename(work).startswith(".work-") and len(os.path.basename(work)) > len(".work-") + 4
        assert first != second
        import tempfile

        assert tempfile.gettempdir() == second  # libraries' temporary files land there too
    assert os.listdir(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with run_files.scratch_tempdir(str(tmp_path)) as work:
            open(os.path.join(work, "partial.png"), "wb").close()
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_overwrite_removes_scratch_folders_an_interrupted_run_left(tmp_path):
    for name in (".work", ".work-abc123", ".work-x9"):
        os.makedirs(tmp_path / "run" / name / "images")
    with pytest.raises(InputError, match="scratch folder of an interrupted run: pass --overwrite"):
        run_files.prepare_output_dir(str(tmp_path / "run"), overwrite=False)
    run_files.prepare_output_dir(str(tmp_path / "run"), overwrite=True)
    assert os.listdir(tmp_path / "run") == []

    (tmp_path / "prev").mkdir()
    for name in (run_files.SUMMARY_FILE, "predictions.csv"):
        (tmp_path / "prev" / name).write_text("{}")
    os.makedirs(tmp_path / "prev" / ".work-old" / "converted")
    run_files.prepare_output_dir(str(tmp_path / "prev"), overwrite=True)
    assert os.listdir(tmp_path / "prev") == []

    (tmp_path / "user").mkdir()
    (tmp_path / "user" / ".work-mine").write_text("a file of the user's, not our scratch folder")
    (tmp_path / "user" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="refusing to delete files there"):
        run_files.prepare_output_dir(str(tmp_path / "user"), overwrite=True)
    assert sorted(os.listdir(tmp_path / "user")) == [".work-mine", "notes.txt"]
