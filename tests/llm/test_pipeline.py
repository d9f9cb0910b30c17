"""The pipeline end to end on a tiny model: every phase, the report, resume after a failed phase, and
slurm/pipeline.sh without SLURM (its banners and exit status). The real-SLURM tests are in test_slurm.py."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, call_script, load_script, run

from lib.common.errors import EXIT_USAGE

PHASES = ["data", "sft", "eval_sft", "grpo", "eval_grpo", "report"]


def tiny_pipeline_config(root: Path, tiny: Path) -> Path:
    """A complete pipeline config for the tiny model: a few seconds per phase."""
    config = {
        "extends": str(ROOT / "configs" / "profiles" / "cpu.yaml"),
        "seed": 3,
        "model": {"name": str(tiny), "max_seq_length": 2048},
        "data": {"dataset_name": "pipe", "datasets_dir": str(root / "datasets"), "eval_max_samples": 0},
        "run": {"models_dir": str(root / "models")},
        "sft": {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1},
        # 4 completions per step = 2 prompts x num_generations 2
        "grpo": {
            "max_steps": 1,
            "per_device_train_batch_size": 4,
            "num_generations": 2,
            "max_completion_length": 8,
        },
        "generate": {"systems": ["double_integrator_short"], "train_samples": 6, "eval_samples": 3},
        "eval": {"num_samples": 3, "max_new_tokens": 8, "batch_size": 4, "plot_instances": 1},
        "pipeline": {"results_dir": str(root / "results")},
    }
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def build_tiny(root: Path) -> Path:
    from lib.control.answer import build_prompt
    from lib.control.systems import get_system
    from lib.llm.models import build_tiny_model

    system = get_system("double_integrator_short")
    corpus = [m["content"] for m in build_prompt(system, [0.1, 0.2])] + [
        "<REASONING>a</REASONING><CONTROLS>1</CONTROLS>"
    ]
    return build_tiny_model(root / "tiny", corpus)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    return root, tiny_pipeline_config(root, build_tiny(root))


def pipeline_main(argv):
    return call_script("run_pipeline", argv)


def failing_launcher(root: Path, code: int, stage: str = "grpo") -> Path:
    """A TRAIN_LAUNCHER that fails the `stage` training phase with `code` and runs the other one."""
    script = root / f"fail_{stage}.sh"
    script.write_text(
        f'#!/bin/sh\ncase "$*" in *training_type={stage}*) exit {code};; esac\nexec {sys.executable} "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.mark.slow  # ~1 min; the SLURM test (test_slurm.py) runs the same phases in CI
def test_a_failed_phase_stops_the_pipeline_then_a_rerun_resumes_and_reports(workspace, monkeypatch):
    root, config = workspace
    monkeypatch.setenv("TRAIN_LAUNCHER", str(failing_launcher(root, 3)))
    assert pipeline_main(["--config", str(config)]) == 3
    (run_dir,) = (root / "results").glob("pipeline_*")
    state = json.loads((run_dir / "state.json").read_text())["phases"]
    assert [state[p]["status"] for p in PHASES] == ["completed"] * 3 + ["failed", "pending", "pending"]
    assert state["grpo"]["exit_code"] == 3
    sft_metrics = (run_dir / "sft_evaluation" / "metrics.json").read_bytes()

    monkeypatch.delenv("TRAIN_LAUNCHER")
    assert pipeline_main(["--run-dir", str(run_dir)]) == 0
    state = json.loads((run_dir / "state.json").read_text())["phases"]
    assert [p for p in PHASES if state[p]["status"] == "completed"] == PHASES
    assert (run_dir / "sft_evaluation" / "metrics.json").read_bytes() == sft_metrics  # kept, not redone
    sft_eval = json.loads((run_dir / "sft_evaluation" / "metrics.json").read_text())
    assert list(sft_eval["models"]) == ["base", "sft"] and sft_eval["context"]["records"] == 3
    assert list(json.loads((run_dir / "grpo_evaluation" / "metrics.json").read_text())["models"]) == ["grpo"]
    report = (run_dir / "report.md").read_text()
    for row in (
        "| base |",
        "| sft |",
        "| grpo |",
        "| optimal (exact) |",
        "| u = 0 |",
        "| grpo | completed |",
    ):
        assert row in report
    assert "## GRPO - SFT on the same problems (paired)" in report
    # the verdict of every model against the best baseline opens the report, as in each evaluation's
    assert report.split("\n")[2] == "## Verdict"
    assert all(f"- **{label}** beats the best baseline" in report for label in ("base", "sft", "grpo"))
    document = json.loads((run_dir / "metrics.json").read_text())
    assert set(document["vs_best_baseline"]) == {"base", "sft", "grpo"} and "| baseline: nearest |" in report
    assert set(document["vs_each_baseline"]) == {"base", "sft", "grpo"} and "| grpo | nearest |" in report
    paired = document["grpo_minus_sft"]
    assert paired["problems"] == 3 and set(paired) == {"problems", "gap", "score"}
    assert (run_dir / "comparison.png").stat().st_size > 10_000
    assert (run_dir / "sft_evaluation" / "performance_summary.png").is_file()
    grpo_info = json.loads((root / "models/universal/grpo" / run_dir.name / "run_info.json").read_text())
    assert grpo_info["init_run"] == str(root / "models/universal/sft" / run_dir.name)


def test_bad_usage_exits_2(workspace, tmp_path):
    root, config = workspace
    assert pipeline_main([]) == EXIT_USAGE
    assert pipeline_main(["--run-dir", str(tmp_path)]) == EXIT_USAGE  # not a pipeline folder
    assert pipeline_main(["--config", str(config), "pipeline.phases=data,nope"]) == EXIT_USAGE
    assert pipeline_main(["--config", str(config), "data.dataset_name=null"]) == EXIT_USAGE


def test_pipeline_sh_without_slurm_prints_banners_and_exits_with_the_failed_phase_status(workspace, tmp_path):
    root, config = workspace
    overrides = f"pipeline.results_dir={tmp_path / 'results'} pipeline.phases=data,sft,report"
    env = {"CONFIG": str(config), "PIPELINE_OVERRIDES": overrides, "PYTHON": sys.executable,
           "TRAIN_LAUNCHER": str(failing_launcher(tmp_path, 4, "sft"))}  # fmt: skip
    result = run(["bash", "slurm/pipeline.sh"], env=env)
    assert result.returncode == 4, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "PHASE 1/3: data" in out and "PHASE 2/3: sft" in out and out.count("Started at: ") == 2
    assert "OK: phase data completed in " in out
    assert "FAILED: phase sft exited with status 4 after " in out and "Total runtime: " in out
    assert "PHASE 3/3" not in out

    (run_dir,) = (tmp_path / "results").glob("pipeline_*")
    env = {"RUN_DIR": str(run_dir), "PYTHON": sys.executable, "TRAIN_LAUNCHER": "false"}
    resumed = run(["bash", "slurm/pipeline.sh"], env=env)
    assert resumed.returncode == 1  # `false` as the launcher: the sft phase fails with status 1
    assert "phase data: already completed" in resumed.stdout


def test_phases_run_the_scripts_with_the_pipeline_config_and_key_value_overrides(
    workspace, tmp_path, monkeypatch
):
    """No setting is turned into a flag by hand: each phase gets config.json plus its own few overrides."""
    from lib.llm import pipeline as script
    from lib.llm.pipeline_folder import read_config, read_state

    root, config = workspace
    fresh = [
        f"pipeline.results_dir={tmp_path}",
        f"data.datasets_dir={tmp_path / 'ds'}",
        f"run.models_dir={tmp_path}",
    ]
    assert pipeline_main(["--config", str(config), *fresh, "--init"]) == 0
    (run_dir,) = tmp_path.glob("pipeline_*")
    assert list(read_state(run_dir)["phases"]) == PHASES
    cfg = read_config(run_dir)
    sft = script.training_run(cfg, "sft", run_dir.name)
    sft.mkdir(parents=True)
    (sft / "run_info.json").write_text("{}")
    commands = []
    monkeypatch.setattr(script, "_run", lambda command: commands.append(command) or 0)
    assert script.phase_data(cfg, run_dir) == 0 and script.phase_eval_sft(cfg, run_dir) == 0
    data, evaluate = commands
    assert data[1:] == [str(ROOT / "scripts/generate_data.py"), "--config", str(run_dir / "config.json")]
    assert evaluate[1:4] == [str(ROOT / "scripts/main_eval.py"), "--config", str(run_dir / "config.json")]
    models = json.dumps([cfg["model"]["name"], str(sft)])
    own = [
        f"eval.model_path={models}",
        'eval.labels=["base", "sft"]',
        f"eval.output_dir={run_dir / 'sft_evaluation'}",
    ]
    assert evaluate[4:] == [*own, "eval.save_plots=true"]
    evaluated = load_script("main_eval")
    resolved = evaluated.resolve_eval_config(evaluated.parse_args(evaluate[2:]))
    assert (
        resolved["eval"]["batch_size"] == 4 and resolved["data"]["dataset_name"] == "pipe"
    )  # from the config

    # the labels-only control: the corrected stage from this SFT run, asking it nothing, in its own run
    labels = script.labels_run(cfg, run_dir)
    assert labels == script.training_run(cfg, "corrected", f"{run_dir.name}_labels")
    assert script.phase_labels(cfg, run_dir) == 0
    train = commands[-1]
    assert train[-5:] == [
        "training_type=corrected",
        f"run.run_id={run_dir.name}_labels",
        f"corrected.init_from={sft}",
        "corrected.prompts=0",
        "corrected.label_records=-1",  # every train label, whatever the corrected stage's own mix
    ]
    labels.mkdir(parents=True)
    (labels / "run_info.json").write_text("{}")
    assert script.phase_eval_labels(cfg, run_dir) == 0
    assert commands[-1][4:7] == [
        f"eval.model_path={json.dumps([str(labels)])}",
        'eval.labels=["labels"]',
        f"eval.output_dir={run_dir / 'labels_evaluation'}",
    ]


def test_an_old_pipeline_folder_still_resolves(workspace, tmp_path):
    """config.json of a folder made before the generate/eval sections: read through LEGACY_KEYS."""
    from lib.llm.pipeline_folder import read_config

    root, config = workspace
    assert pipeline_main(["--config", str(config), f"pipeline.results_dir={tmp_path}", "--init"]) == 0
    (run_dir,) = tmp_path.glob("pipeline_*")
    cfg = json.loads((run_dir / "config.json").read_text())
    generate, evaluate = cfg.pop("generate"), cfg.pop("eval")
    evaluate["eval_mode"] = evaluate.pop("mode")
    cfg["pipeline"] |= {"data": generate, "eval": {**evaluate, "include_base": False, "save_plots": True}}
    del cfg["pipeline"]["include_base"], cfg["pipeline"]["save_plots"]
    (run_dir / "config.json").write_text(json.dumps(cfg))
    new = read_config(run_dir)
    assert (
        new["generate"] == generate and new["eval"]["batch_size"] == 4 and not new["pipeline"]["include_base"]
    )


def test_every_phase_is_in_the_schema_the_folder_format_and_the_phase_table():
    """A phase the schema offers can be run (--phase), and a pipeline folder lists the phases its config runs."""
    import json

    from lib.common.config import ROOT
    from lib.llm.pipeline import PHASE_FUNCTIONS
    from lib.llm.pipeline_folder import PHASES

    schema = json.loads((ROOT / "schemas" / "control.schema.json").read_text())
    offered = schema["properties"]["pipeline"]["properties"]["phases"]["items"]["enum"]
    assert list(PHASES) == list(PHASE_FUNCTIONS) == offered
