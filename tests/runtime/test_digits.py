"""The trained digits model (tools/digits.py) classifies its held-out images through the runtime's CLI with
the accuracy that `tools/digits.py evaluate` measures on the same artifacts (README: 99.78%)."""

import json
import subprocess
import sys

from export import Options, run

from ..conftest import ROOT, failed_rows


def test_held_out_accuracy_through_the_cli(tmp_path):
    report = run(Options(weights=str(ROOT / "models" / "digits"), out_dir=tmp_path, precisions=("fp32", "int8")))
    assert report["passed"], failed_rows(report)
    held_out = tmp_path / "held-out"
    tool = [sys.executable, "-m", "tools.digits"]  # from the repository's root
    subprocess.run([*tool, "images", held_out], check=True, capture_output=True, cwd=ROOT)
    artifacts = [tmp_path / entry["file"] for entry in report["artifacts"].values()]
    subprocess.run([*tool, "evaluate", *artifacts, "--json", tmp_path / "accuracy.json"], check=True,
                   capture_output=True, cwd=ROOT)
    evaluated = json.loads((tmp_path / "accuracy.json").read_text())
    for artifact in artifacts:
        result = subprocess.run([sys.executable, "-m", "runtime", "predict", held_out, "--model", artifact, "--json",
                                 "--top-k", "1"], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(lines) == evaluated["images"] == 450
        correct = sum(line["top_k"][0]["label"] == line["image"].split("/")[-2] for line in lines)
        assert correct / len(lines) == evaluated["top1"][artifact.name], artifact.name
        assert correct / len(lines) >= 0.99, artifact.name
