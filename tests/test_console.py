"""The console reads like a tool: our lines (stages, one per epoch, a final summary) on the console, Ludwig's
tables and the libraries' warnings in training_log.txt, unless --verbose. The CLI runs as Galaxy runs it:
its own process, stdout and stderr a pipe (not a terminal)."""

import os
import re
import subprocess
import sys
import zipfile

import pandas as pd
import pytest

from conftest import CLI, DEMO_CSV, DEMO_ZIP
from image_learner import console

TINY = ["--model-name", "test_efficientnet", "--no-use-pretrained", "--image-size", "32", "--epochs", "2",
        "--early-stop", "0", "--batch-size", "16", "--preprocessing-workers", "1"]
LUDWIG_TABLE = "EXPERIMENT DESCRIPTION"  # the first of Ludwig's boxed tables


def _run_cli(tmp_path, *extra, csv=DEMO_CSV, image_zip=DEMO_ZIP):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, CLI, "--csv-file", str(csv), "--image-zip", str(image_zip),
                             "--output-dir", str(out), *TINY, *extra],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout + result.stderr


@pytest.fixture(scope="module")
def with_a_broken_image(tmp_path_factory):
    """The demo set plus one CSV row whose image is not an image: skipped with a warning."""
    folder = tmp_path_factory.mktemp("broken")
    image_zip = folder / "images.zip"
    with zipfile.ZipFile(DEMO_ZIP) as source, zipfile.ZipFile(image_zip, "w") as target:
        for item in source.infolist():
            target.writestr(item, source.read(item.filename))
        target.writestr("broken_lesion.jpg", b"\xff\xd8\xff\xe0 this is not a JPEG")
    table = pd.read_csv(DEMO_CSV)
    extra = table.iloc[[0]].assign(image_path="broken_lesion.jpg", lesion_id="broken_lesion")
    csv = folder / "meta.csv"
    pd.concat([table, extra]).to_csv(csv, index=False)
    return csv, image_zip


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory, with_a_broken_image):
    csv, image_zip = with_a_broken_image
    return _run_cli(tmp_path_factory.mktemp("quiet"), "--sample-id-column", "lesion_id", csv=csv,
                    image_zip=image_zip)


def test_the_console_has_one_line_per_epoch_and_a_summary_and_no_carriage_returns(quiet_run):
    out, text = quiet_run
    lines = text.splitlines()
    assert "\r" not in text
    assert len(lines) < 60, text
    epochs = [line for line in lines if re.search(r"\bepoch \d+/2:", line)]
    assert [re.search(r"epoch (\d+)/2", line).group(1) for line in epochs] == ["1", "2"], text
    assert all("train loss" in line and "validation balanced accuracy" in line for line in epochs)
    assert f"report: {out / 'report.html'}" in text
    assert f"model: {out / 'trained_model.zip'}" in text
    assert re.search(r"test balanced accuracy [\d.]+ \(95% interval [\d.]+-[\d.]+; \d+ images\)", text), text
    assert LUDWIG_TABLE not in text and "╒" not in text  # Ludwig's tables are not on the console
    assert all(line.startswith(console.PREFIX) for line in lines), text  # nothing but our lines


def test_ludwig_output_and_our_lines_are_in_training_log(quiet_run):
    out, text = quiet_run
    log = (out / "training_log.txt").read_text(encoding="utf-8")
    assert LUDWIG_TABLE in log and "╒" in log
    for line in text.splitlines():  # the console's lines are in the log too, in order
        assert line in log


def test_a_warning_about_our_own_input_stays_on_the_console(quiet_run):
    _, text = quiet_run
    assert re.search(r"\[image-learner\] WARNING: .*broken_lesion\.jpg", text), text


def test_verbose_shows_ludwig_output_on_the_console(tmp_path):
    out, text = _run_cli(tmp_path, "--verbose")
    assert LUDWIG_TABLE in text
    assert "\r" not in text  # not a terminal: Ludwig's progress bars are off
    assert "--verbose" in (out / "training_log.txt").read_text(encoding="utf-8")


def test_epoch_line_says_what_is_left_at_most():
    line = console.epoch_line(3, 15, 0.8123, "balanced_accuracy", 0.41234, 0.455, 2, 36.0)
    assert line == ("epoch 3/15: train loss 0.812, validation balanced accuracy 0.412 (best 0.455, epoch 2), "
                    "36 s, at most 2 min 24 s left")
    assert console.epoch_line(2, 2, 1.0, "mae", None, None, None, 61.0) == "epoch 2/2: train loss 1.000, 1 min 01 s"


def test_library_output_goes_to_the_file_also_from_c_code_and_comes_back(tmp_path, capfd):
    path = tmp_path / "log.txt"
    with console.library_output_to(str(path)):
        print("from python")
        os.write(1, b"from fd 1\n")
        os.write(2, b"from fd 2\n")
        console.log("ours")
    print("after")
    captured = capfd.readouterr()
    assert "from python" not in captured.out + captured.err and "from fd" not in captured.out + captured.err
    assert "[image-learner] ours" in captured.out and "after" in captured.out
    assert path.read_text().splitlines() == ["from python", "from fd 1", "from fd 2", "[image-learner] ours"]


def test_worker_errors_are_named(tmp_path):
    from image_learner.training import data_parallel

    script = tmp_path / "worker.py"
    script.write_text("import os\nprint('[image-learner] epoch 1/1: from rank', os.environ['RANK'], flush=True)\n"
                      "if os.environ['RANK'] == '1':\n    raise ValueError('image 7 is gone')\n")
    with pytest.raises(data_parallel.WorkersFailed, match="ValueError: image 7 is gone"):
        data_parallel.launch(data_parallel.launch_command(2, [str(script)]), {**os.environ, "TMPDIR": str(tmp_path)},
                             timeout_s=120)
