"""The train -> predict Galaxy workflow (workflows/image_learner_train_predict.gxwf.yml) parses, and stays in
step with the two tools: the tool ids and versions its steps name are the XMLs' own (tokens of macros.xml
filled in), every input it connects or sets is a parameter of that tool, and the trained model's datatype
is one that predict's model input accepts. Cheap: no Galaxy; scripts/galaxy_tests.sh runs the workflow."""

import json
import os
import subprocess
import xml.etree.ElementTree as ET

import yaml

from conftest import ROOT

WORKFLOW = os.path.join(ROOT, "workflows", "image_learner_train_predict.gxwf.yml")
# planemo finds a workflow's tests by its name less the last extension, plus "-tests.yml"
WORKFLOW_TESTS = os.path.join(ROOT, "workflows", "image_learner_train_predict.gxwf-tests.yml")
# planemo's venv, where scripts/galaxy_tests.sh installs it (galaxy_ci.sh's default prefix)
GXCI_PREFIX = os.environ.get("GXCI_PREFIX") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "galaxy-tool-ci")
PLANEMO_PYTHON = os.path.join(GXCI_PREFIX, "planemo-venv", "bin", "python")

# In planemo's venv: gxformat2 converts the workflow to Galaxy's native format, as Galaxy does on import.
TO_NATIVE = """
import json, sys
from gxformat2.converter import python_to_workflow
from gxformat2.yaml import ordered_load
native = python_to_workflow(ordered_load(open(sys.argv[1])), None, None)
steps = [{"tool_id": s.get("tool_id"), "tool_version": s.get("tool_version"),
          "inputs": sorted(set(s.get("input_connections", {})) | set(json.loads(s.get("tool_state") or "{}")))}
         for s in native["steps"].values() if s.get("type") == "tool"]
print(json.dumps(steps))
"""


def _tool(xml_name: str) -> tuple[ET.Element, str, str]:
    """A tool XML's root, id and version, with macros.xml's tokens filled in."""
    macros = ET.parse(os.path.join(ROOT, "macros.xml")).getroot()
    tokens = {t.get("name"): t.text for t in macros.iter("token")}
    root = ET.parse(os.path.join(ROOT, xml_name)).getroot()
    version = root.get("version")
    for name, value in tokens.items():
        version = version.replace(name, value)
    return root, root.get("id"), version


def _param_paths(element: ET.Element, prefix: str = "") -> set[str]:
    """Every input of a tool as Galaxy names it in a workflow: 'section|param', 'conditional|param'; a
    conditional's and a section's own name too (the state sets them as nested dicts)."""
    paths = set()
    for child in element:
        if child.tag == "param":
            name = child.get("name") or child.get("argument").lstrip("-").replace("-", "_")
            paths.add(prefix + name)
        elif child.tag in ("conditional", "section"):
            paths.add(prefix + child.get("name"))
            paths |= _param_paths(child, prefix + child.get("name") + "|")
        elif child.tag == "when":
            paths |= _param_paths(child, prefix)
    return paths


def _flatten(state: dict, prefix: str = "") -> set[str]:
    """A step's state as parameter paths: {'backbone': {'source': ...}} -> {'backbone', 'backbone|source'}."""
    paths = set()
    for key, value in state.items():
        paths.add(prefix + key)
        if isinstance(value, dict):
            paths |= _flatten(value, prefix + key + "|")
    return paths


def _yaml_steps(workflow: dict) -> list[dict]:
    """The tool steps read as plain YAML: id, version, and every input connected ('in') or set ('state')."""
    return [{"tool_id": step["tool_id"], "tool_version": step["tool_version"],
             "inputs": sorted(set(step.get("in", {})) | _flatten(step.get("state", {})))}
            for step in workflow["steps"].values()]


def _workflow() -> dict:
    with open(WORKFLOW) as handle:
        return yaml.safe_load(handle)


def test_the_workflow_parses_and_names_the_tools_ids_and_versions():
    workflow = _workflow()
    assert workflow["class"] == "GalaxyWorkflow"
    steps = _yaml_steps(workflow)
    if os.path.exists(PLANEMO_PYTHON):  # gxformat2 where scripts/galaxy_tests.sh installed planemo
        converted = subprocess.run([PLANEMO_PYTHON, "-c", TO_NATIVE, WORKFLOW], capture_output=True, text=True,
                                   timeout=120)
        assert converted.returncode == 0, converted.stderr
        native = json.loads(converted.stdout)
        assert [(s["tool_id"], s["tool_version"]) for s in native] == [(s["tool_id"], s["tool_version"])
                                                                       for s in steps]
    named = [(s["tool_id"], s["tool_version"]) for s in steps]
    assert named == [_tool("image_learner.xml")[1:], _tool("image_learner_predict.xml")[1:]]
    assert named[0] == ("image_learner", "0.1.0+galaxy0")  # the tokens were filled in


def test_every_input_the_workflow_connects_or_sets_is_a_parameter_of_its_tool():
    for step, xml_name in zip(_yaml_steps(_workflow()), ["image_learner.xml", "image_learner_predict.xml"]):
        root = _tool(xml_name)[0]
        unknown = set(step["inputs"]) - _param_paths(root.find("inputs"))
        assert not unknown, f"{xml_name} has no parameter {sorted(unknown)}"


def test_the_trained_model_goes_to_predict_without_a_conversion():
    workflow = _workflow()
    assert workflow["steps"]["predict"]["in"]["model"] == "train/output_model"
    train = _tool("image_learner.xml")[0]
    predict = _tool("image_learner_predict.xml")[0]
    model_format = next(d.get("format") for d in train.iter("data") if d.get("name") == "output_model")
    accepted = next(p.get("format") for p in predict.iter("param") if p.get("name") == "model").split(",")
    assert model_format in accepted


def test_the_workflow_test_gives_every_input_and_its_files_exist():
    workflow = _workflow()
    with open(WORKFLOW_TESTS) as handle:
        tests = yaml.safe_load(handle)
    assert tests, "no test case"
    for case in tests:
        assert set(case["job"]) == set(workflow["inputs"])
        for value in case["job"].values():
            if isinstance(value, dict) and value.get("class") == "File":
                assert os.path.isfile(os.path.join(os.path.dirname(WORKFLOW_TESTS), value["path"])), value
        assert set(case["outputs"]) <= set(workflow["outputs"])
        assert "predictions" in case["outputs"]  # predict's output is what the test is about
