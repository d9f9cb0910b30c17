"""The pipeline's report phase in a folder shared with the user: it replaces only the report files it wrote
itself (lib/common/outputs.py, the PIPELINE writer of lib/llm/pipeline_report.py) and refuses, exit 2, a
report.md of the user's or an evaluation's metrics.json it cannot read. No training: the folder is made with
--init and the report phase alone runs (well under a second each).

Before: the user's report.md was replaced (exit 0), and a non-JSON sft_evaluation/metrics.json gave a
JSONDecodeError traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import ROOT, call_script

from lib.common.errors import EXIT_OK, EXIT_USAGE
from lib.common.outputs import sha256_of
from lib.llm.pipeline_report import PIPELINE


def new_pipeline(tmp_path: Path) -> Path:
    config = str(ROOT / "configs" / "smollm2" / "demo_cpu.yaml")
    assert (
        call_script("run_pipeline", ["--config", config, f"pipeline.results_dir={tmp_path}", "--init"]) == 0
    )
    (run_dir,) = tmp_path.glob("pipeline_*")
    return run_dir


def report_phase(run_dir: Path) -> int:
    return call_script("run_pipeline", ["--run-dir", str(run_dir), "--phase", "report", "--rerun"])


def test_the_report_phase_refuses_a_users_report_md_and_touches_nothing(tmp_path, capsys):
    run_dir = new_pipeline(tmp_path)
    (run_dir / "report.md").write_text("my own notes on this run")
    assert report_phase(run_dir) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and "report.md" in err and str(run_dir) in err and "fix:" in err, err
    assert (run_dir / "report.md").read_text() == "my own notes on this run"
    assert not (run_dir / "metrics.json").exists() and not (run_dir / PIPELINE.manifest).exists()


def test_the_report_phase_replaces_its_own_report_and_nothing_else(tmp_path):
    run_dir = new_pipeline(tmp_path)
    (run_dir / "notes.md").write_text("mine")
    assert report_phase(run_dir) == EXIT_OK
    first = (run_dir / "report.md").read_text()
    assert "nothing to compare yet" in first
    assert set(json.loads((run_dir / PIPELINE.manifest).read_text())["files"]) == {
        "metrics.json",
        "report.md",
    }
    (run_dir / "report.md").write_text("stale")  # as if a crash had left it: the manifest proves nothing now
    assert report_phase(run_dir) == EXIT_USAGE
    (run_dir / "report.md").write_text(first)  # its own content again: replaced
    assert report_phase(run_dir) == EXIT_OK
    manifest = json.loads((run_dir / PIPELINE.manifest).read_text())
    assert manifest["files"]["report.md"] == [sha256_of(run_dir / "report.md")]
    assert (run_dir / "notes.md").read_text() == "mine"


def test_a_report_written_before_the_manifest_is_replaced(tmp_path):
    run_dir = new_pipeline(tmp_path)
    (run_dir / "metrics.json").write_text(json.dumps({"pipeline": run_dir.name, "phases": {}, "models": {}}))
    (run_dir / "report.md").write_text("# Pipeline (an old report)")
    assert report_phase(run_dir) == EXIT_OK
    assert "nothing to compare yet" in (run_dir / "report.md").read_text()


@pytest.mark.parametrize(
    "content", ["{not json", "[]", '{"context": {}, "models": {"sft": 1}, "references": {}}']
)
def test_an_evaluation_metrics_json_it_cannot_read_exits_2_naming_it(tmp_path, capsys, content):
    run_dir = new_pipeline(tmp_path)
    metrics = run_dir / "sft_evaluation" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(content)
    assert report_phase(run_dir) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(metrics) in err and "--phase eval_sft" in err, err
    assert not (run_dir / "report.md").exists()
