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

import numpy as np
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


# ---------------------------------------------------------------- best of k and second stage - SFT, paired


def write_evaluation(folder: Path, records: list[dict], results: list[dict]) -> None:
    """An evaluation phase's metrics.json and samples.jsonl from scored answers, as main_eval writes them."""
    from lib.llm.evaluation import REFERENCES, reference_rows, summarize
    from lib.llm.report import metrics_document, sample_lines

    context = {"dataset": "pairs", "records": len(records), "eval_mode": "control", "samples_per_prompt": 1,
               "temperature": 0.0, "decoding": "expected_value", "max_new_tokens": 512, "seed": 0}  # fmt: skip
    summaries = {r["label"]: summarize(r["rows"]) for r in results}
    references = {name: summarize(reference_rows(records, name)) for name in REFERENCES}
    folder.mkdir()
    (folder / "metrics.json").write_text(
        json.dumps(metrics_document(context, results, summaries, references, {}))
    )
    (folder / "samples.jsonl").write_text(sample_lines(results))


def scaled_answers(records: list[dict], *factors: float) -> list[dict]:
    """Scored doubles for a model's answers: sample j of each record answers factors[j % len(factors)] * u*
    (as many samples a record as factors)."""
    from lib.llm.evaluation import answer_records, score_samples

    def answer(prompts):
        out = []
        for j, prompt in enumerate(prompts):
            record = next(r for r in records if r["prompt"] == prompt)
            u = factors[j % len(factors)] * np.asarray(record["u_opt"])
            out.append(f"<REASONING>r</REASONING><CONTROLS>{', '.join(repr(float(v)) for v in u)}</CONTROLS>")
        return out

    return score_samples(records, answer_records(records, answer, len(factors)))


def pair_records(tmp_path: Path) -> list[dict]:
    from helpers import make_dataset

    from lib.control.dataset_format import load_records

    return load_records(make_dataset(tmp_path, "pairs", ["double_integrator"], 2, 24), "eval")[0]


def test_the_report_pairs_best_of_k_with_greedy_and_grpo_with_sft(tmp_path):
    """Doubles for the models: SFT answers 0.8 u*, its samples alternate 0.8 u* and u*, GRPO answers 0.9 u*;
    the optimum's gap is 0, so both improvements are clear on every problem."""
    from lib.llm.evaluate import best_of_results

    records = pair_records(tmp_path)
    calls = {"prompts": len(records), "seconds": 1.0}
    sft = scaled_answers(records, 0.8)
    samples = scaled_answers(records, 0.8, 1.0)
    grpo = scaled_answers(records, 0.9)
    run_dir = new_pipeline(tmp_path)
    write_evaluation(run_dir / "sft_evaluation", records, [
        {"label": "sft", "model": "sft run", "rows": sft, "calls": calls},
        *best_of_results("sft", "sft run", sft, samples, [2], 0.5, calls, seed=0)])  # fmt: skip
    write_evaluation(run_dir / "grpo_evaluation", records,
                     [{"label": "grpo", "model": "grpo run", "rows": grpo, "calls": calls}])  # fmt: skip
    assert report_phase(run_dir) == EXIT_OK
    report = (run_dir / "report.md").read_text()
    assert "temperature 0.0 (each control the expected value of the model's distribution over it" in report
    assert "| sft best-of-2 | 24 |" in report  # a row of the tables, like the models'
    assert "## Best of k - greedy on the same problems (paired)" in report
    assert "| sft best-of-2 (samples at temperature 0.5) vs sft | 24 |" in report
    assert "## GRPO - SFT on the same problems (paired)" in report and "| GRPO vs SFT | 24 |" in report
    document = json.loads((run_dir / "metrics.json").read_text())
    pair = document["grpo_minus_sft"]
    assert set(pair) == {"problems", "gap", "score"} and pair["problems"] == 24
    ratio = pair["gap"]["log_ratio"]
    assert ratio["both_feasible"] == 24 and ratio["after_better"] == 1.0
    assert ratio["typical_ratio_ci"][1] < 1  # GRPO's gaps are smaller, the interval excludes no change
    best = document["models"]["sft best-of-2"]["best_of"]
    assert best["beats_greedy"] == 1.0 and best["vs_greedy"]["typical_ratio"] < 0.1  # the optimum: gap 0


def test_each_second_stage_is_paired_with_the_labels_only_control_when_the_pipeline_trained_one(tmp_path):
    """SFT answers 0.8 u*, the labels-only control 0.95 u*, RFT 0.9 u*: RFT beats SFT on every problem and
    loses to the control on every problem, and the report says both; the control itself is paired with SFT
    like a second stage, not with itself."""
    records = pair_records(tmp_path)
    config = str(ROOT / "configs" / "scratch" / "corrected_cpu.yaml")
    phases = '["sft", "eval_sft", "rft", "eval_rft", "labels", "eval_labels", "report"]'
    argv = ["--config", config, f"pipeline.results_dir={tmp_path}", f"pipeline.phases={phases}", "--init"]
    assert call_script("run_pipeline", argv) == 0
    (run_dir,) = tmp_path.glob("pipeline_*")
    calls = {"prompts": len(records), "seconds": 1.0}
    for stage, factor in (("sft", 0.8), ("rft", 0.9), ("labels", 0.95)):
        rows = scaled_answers(records, factor)
        write_evaluation(run_dir / f"{stage}_evaluation", records,
                         [{"label": stage, "model": f"{stage} run", "rows": rows, "calls": calls}])  # fmt: skip
    assert report_phase(run_dir) == EXIT_OK
    report = (run_dir / "report.md").read_text()
    assert "## LABELS - SFT on the same problems (paired)" in report and "| RFT vs SFT | 24 |" in report
    assert "## Second stages - labels only on the same problems (paired)" in report
    assert "| RFT vs LABELS | 24 |" in report and "| LABELS vs LABELS |" not in report
    document = json.loads((run_dir / "metrics.json").read_text())
    assert set(document) >= {"rft_minus_sft", "labels_minus_sft", "rft_minus_labels"}
    assert "labels_minus_labels" not in document
    versus = document["rft_minus_labels"]["gap"]["log_ratio"]
    assert (
        versus["both_feasible"] == 24 and versus["after_better"] == 0.0 and versus["typical_ratio_ci"][0] > 1
    )
