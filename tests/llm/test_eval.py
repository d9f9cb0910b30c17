"""Evaluation by simulation: metrics against the optimum, MPC, reports and figures, and main_eval's CLI.

The answerers here are test doubles standing in for a model's generation (a function prompts -> texts): one
returns the exact optimum, one the printed labels, one zeros, one a wrong-length answer. Real generation
from a tiny model runs through the CLI tests.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import call_script, load_script, make_dataset, run_python, tiny_model_on

from lib.common.errors import EXIT_USAGE
from lib.control.dataset_format import load_records
from lib.control.references import solve_reference
from lib.control.systems import get_system
from lib.llm.evaluation import (
    answer_records,
    bootstrap_ci,
    gap_by_step,
    pass_at_k,
    reference_rows,
    score_samples,
    summarize,
)
from lib.llm.report import gap_by_step_lines

X0_PATTERN = re.compile(r"Initial state: x_0 = \(([^)]*)\)")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Eval records of two systems (6 each) and a tiny model trained on nothing in particular."""
    root = tmp_path_factory.mktemp("eval")
    mix = make_dataset(root, "mix", ["double_integrator", "van_der_pol"], 4, 12)
    tiny_model_on(root / "tiny", load_records(mix, "eval", round_robin=True)[0][:4])
    return root


@pytest.fixture(scope="module")
def records(workspace):
    return load_records(workspace / "datasets" / "mix", "eval", round_robin=True)[0]


def by_prompt(records, make_text):
    """An answerer that looks each prompt up among the records (prompts are unique per record)."""
    table = {json.dumps(r["prompt"]): r for r in records}
    return lambda prompts: [make_text(table[json.dumps(p)]) for p in prompts]


def wrap(u) -> str:
    return f"<REASONING>r</REASONING><CONTROLS>{', '.join(repr(float(v)) for v in u)}</CONTROLS>"


def exact_optimum(record) -> str:
    return wrap(record["u_opt"])  # full precision: the certified optimum itself


def test_records_are_interleaved_over_systems_and_capped(records, workspace):
    assert [r["system"] for r in records[:4]] == ["double_integrator", "van_der_pol"] * 2
    capped, _ = load_records(workspace / "datasets" / "mix", "eval", limit=3, round_robin=True)
    assert [r["id"] for r in capped] == [r["id"] for r in records[:3]]
    assert all(r["J_floor"] > 0 for r in capped)


def test_the_optimal_answers_score_as_optimal(records):
    rows = score_samples(records, answer_records(records, by_prompt(records, exact_optimum)))
    m = rows.metrics
    assert m["parsed"].all() and m["feasible"].all()
    assert np.abs(m["gap"]).max() < 1e-9
    assert np.allclose(m["score"], 1.0, atol=1e-9)
    summary = summarize(rows)["all"]
    for key in ("success@1%", "success@5%", "success@10%", "parsed", "feasible"):
        assert summary[key]["rate"] == 1.0
    assert summary["gap_feasible"]["median"] == pytest.approx(0.0, abs=1e-9)
    assert summary["parse_failures"] == {}


def test_the_printed_labels_are_within_one_percent(records):
    rows = score_samples(
        records, answer_records(records, by_prompt(records, lambda r: r["completion"][0]["content"]))
    )
    assert rows.metrics["success@1%"].all()
    assert (rows.metrics["gap"] >= -1e-12).all()  # a feasible answer can never beat the certified optimum


def test_zeros_score_zero_and_a_wrong_length_is_a_parse_failure_not_padded(records):
    zeros = score_samples(
        records, answer_records(records, by_prompt(records, lambda r: wrap(np.zeros(r["horizon"]["steps"]))))
    )
    assert np.allclose(zeros.metrics["score"], 0.0, atol=1e-12)
    assert zeros.metrics["success@10%"].sum() == 0
    short = score_samples(
        records, answer_records(records, by_prompt(records, lambda r: wrap(r["u_opt"][:-1])))
    )
    assert not short.metrics["parsed"].any()
    assert all(reason.startswith("wrong count: got 49") for reason in short.reason)
    assert np.isnan(short.metrics["J"]).all()  # never simulated as if padded with zeros
    summary = summarize(short)["all"]
    assert summary["parsed"]["rate"] == 0.0 and summary["success@10%"]["rate"] == 0.0
    assert summary["parse_failures"] == {"wrong count": len(records)}


def test_reference_rows(records):
    optimal, zero = reference_rows(records, "optimal"), reference_rows(records, "zero")
    assert np.abs(optimal.metrics["gap"]).max() < 1e-9
    assert np.allclose(zero.metrics["score"], 0.0, atol=1e-12)
    assert np.allclose(zero.metrics["J"], [r["J_zero"] for r in records])


def test_out_of_bounds_answers_are_infeasible_and_never_succeed(records):
    def one_step_beyond(record):  # the optimum with u_0 pushed 0.5 past the upper bound
        u = np.asarray(record["u_opt"], dtype=float).copy()
        u[0] = record["bounds"]["u_max"] + 0.5
        return wrap(u)

    rows = score_samples(records, answer_records(records, by_prompt(records, one_step_beyond)))
    assert rows.metrics["parsed"].all() and not rows.metrics["feasible"].any()
    assert summarize(rows)["all"]["gap_feasible"]["n"] == 0


def test_gap_by_step_finds_the_one_imprecise_control_and_the_report_names_it(records):
    def first_control_halved(record):  # the optimum, but u_0 halved: between u*_0 and 0, so inside the bounds
        u = np.asarray(record["u_opt"], dtype=float).copy()
        u[0] /= 2
        return wrap(u)

    rows = score_samples(records, answer_records(records, by_prompt(records, first_control_halved)))
    by_step = gap_by_step(records, rows)
    assert set(by_step) == {"double_integrator", "van_der_pol"}
    json.dumps(by_step, allow_nan=False)  # metrics.json takes it as it is
    for system, d in by_step.items():
        mine = [r for r in records if r["system"] == system]
        assert d["answers"] == len(mine) and len(d["steps"]) == mine[0]["horizon"]["steps"]
        assert d["median_gap"] > 1e-4  # a halved first control costs something
        first, rest = d["steps"][0], d["steps"][1:]
        assert first["median_abs_error"] == pytest.approx(np.median([abs(r["u_opt"][0]) / 2 for r in mine]))
        assert first["median_gap_step_exact"] == pytest.approx(
            0.0, abs=1e-9
        )  # its exact value is the optimum
        for step in rest:  # exact already: replacing it changes nothing
            assert step["median_abs_error"] == 0.0
            assert step["median_gap_step_exact"] == pytest.approx(d["median_gap"])
    lines = gap_by_step_lines([{"label": "halved", "gap_by_step": by_step}])
    assert "**halved**, double_integrator (6 feasible answers" in "\n".join(lines)
    assert "the 12 of 50 steps whose exact value lowers it most" in "\n".join(lines)  # 50 steps: 12 shown
    first_row = next(line for line in lines if line.startswith("| 0 | 6 |"))  # step 0 of double_integrator
    assert float(first_row.split("|")[4].strip().rstrip("%")) < 1e-6
    # a diverging answer's median is None (infinite): shown as inf, and ranked last among 50 steps, not a crash
    diverging = {"answers": 1, "median_gap": None, "steps": [
        {"step": j, "answers": 1, "median_abs_error": 1.0, "median_gap_step_exact": None if j else 0.5}
        for j in range(50)]}  # fmt: skip
    lines = gap_by_step_lines([{"label": "wild", "gap_by_step": {"double_integrator": diverging}}])
    assert "median gap inf;" in "\n".join(lines) and "| 0 | 1 | 1 | 50% |" in lines
    assert sum(line.endswith("| inf |") for line in lines) == 11  # step 0 and 11 of the 49 infinite ones


def test_pass_at_k_counts_a_prompt_once_any_sample_succeeds(records):
    calls = {"n": 0}

    def alternate(prompts):  # sample 0 answers zeros, sample 1 the optimum
        calls["n"] += 1
        out = []
        for i, prompt in enumerate(prompts):
            record = next(r for r in records if r["prompt"] == prompt)
            out.append(exact_optimum(record) if i % 2 else wrap(np.zeros(record["horizon"]["steps"])))
        return out

    rows = score_samples(records, answer_records(records, alternate, k=2))
    summary = summarize(rows)["all"]
    assert calls["n"] == 1  # one batched call for every sample
    assert summary["success@1%"]["rate"] == pytest.approx(0.5)
    assert summary["pass@2 success@1%"]["rate"] == 1.0
    assert list(pass_at_k([False, True, False, False], 2)) == [True, False]


def test_bootstrap_interval_contains_the_mean_and_is_seeded():
    values = np.random.default_rng(1).normal(3.0, 1.0, 200)
    low, high = bootstrap_ci(values, seed=4)
    assert low < values.mean() < high and high - low < 0.5
    assert bootstrap_ci(values, seed=4) == (low, high)


def exact_solver_answerer(system_name: str):
    """The certified optimum for whatever state the prompt shows (what a perfect model would write)."""
    system = get_system(system_name)
    calls = []

    def answer(prompts):
        calls.append(len(prompts))
        x0 = np.array(
            [[float(v) for v in X0_PATTERN.search(p[1]["content"]).group(1).split(",")] for p in prompts]
        )
        return [wrap(u) for u in solve_reference(system, x0).u]

    return answer, calls


def test_mpc_replans_in_batches_from_the_simulated_state(records):
    di = [r for r in records if r["system"] == "double_integrator"]
    answer, calls = exact_solver_answerer("double_integrator")
    rows = score_samples(di, answer_records(di, answer, mode="mpc", replan_every=10))
    assert calls == [len(di)] * 5  # 50 steps / 10 per plan = 5 rounds, each one call for every instance
    m = rows.metrics
    assert m["parsed"].all() and m["feasible"].all()
    # re-planning from rounded states with a shifted horizon is not the open-loop optimum, but close to it
    assert (m["gap"] >= -1e-9).all() and m["gap"].max() < 0.05


def test_mpc_with_one_plan_is_the_open_loop_evaluation(records):
    open_loop = score_samples(records, answer_records(records, by_prompt(records, exact_optimum)))
    one_plan = score_samples(
        records, answer_records(records, by_prompt(records, exact_optimum), mode="mpc", replan_every=50)
    )
    assert np.allclose(open_loop.metrics["J"], one_plan.metrics["J"])


def test_mpc_reports_which_replan_broke(records):
    di = [r for r in records if r["system"] == "double_integrator"][:2]
    answer, _ = exact_solver_answerer("double_integrator")
    rounds = iter([answer, lambda prompts: ["junk"] * len(prompts)])
    rows = score_samples(di, answer_records(di, lambda p: next(rounds)(p), mode="mpc", replan_every=25))
    assert not rows.metrics["parsed"].any()
    assert rows.reason[0].startswith("re-plan at step 25: missing tag")


# ---------------------------------------------------------------- the CLI, with real generation


def eval_main(argv):
    return call_script("main_eval", argv)


def cli_args(workspace, out, *extra):
    return ["--model-path", str(workspace / "tiny"), "--dataset", "mix", "--num-samples", "4", "--max-new-tokens", "8",
            "--output-dir", str(out), f"data.datasets_dir={workspace / 'datasets'}", "device.type=cpu", *extra]  # fmt: skip


def test_cli_writes_metrics_report_and_figures_and_repeats_itself(workspace, tmp_path):
    out = tmp_path / "eval"
    assert eval_main(cli_args(workspace, out, "--save-plots", "--plot-instances", "1")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["context"]["records"] == 4
    config = metrics["context"]["config"]  # the resolved config, recorded
    assert (
        config["eval"]["plot_instances"],
        config["eval"]["save_plots"],
        config["data"]["dataset_name"],
    ) == (1, True, "mix")
    model = metrics["models"]["tiny"]
    assert model["summary"]["all"]["samples"] == 4
    # 8 tokens of a random model cannot hold 50 controls: every answer is a counted parse failure
    assert model["summary"]["all"]["parsed"]["rate"] == 0.0
    assert sum(model["summary"]["all"]["parse_failures"].values()) == 4
    assert metrics["references"]["optimal"]["all"]["success@1%"]["rate"] == 1.0
    assert metrics["references"]["zero"]["all"]["score_parsed"]["mean"] == pytest.approx(0.0, abs=1e-9)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "performance_summary.png" in pngs
    assert {"double_integrator_trajectory_0.png", "phase_portrait_van_der_pol_0.png"} <= set(pngs)
    assert all((out / p).stat().st_size > 10_000 for p in pngs)
    report = (out / "report.md").read_text()
    assert "## double_integrator" in report and "optimal (exact)" in report and "u = 0" in report
    # the verdict opens the report; 2 train records a system fit nearest and affine, and say why not the others
    assert report.split("\n")[2] == "## Verdict" and "beats the best baseline" in report
    assert metrics["vs_best_baseline"]["tiny"]["beats"] == "no"  # it parses nothing
    assert set(metrics["baselines"]) == {"nearest", "affine", "knn", "mlp"}
    assert "at least 10 train records" in metrics["baselines"]["knn"]["missing"]["van_der_pol"]
    assert "baseline: affine" in report and "baseline: knn" not in report
    # every fitted baseline gets its own paired row, not only the best
    assert set(metrics["vs_each_baseline"]["tiny"]) == {"nearest", "affine"}
    assert "## Against each baseline" in report and "| tiny | affine |" in report
    # a model that fails everywhere is infinitely worse, its interval too (not "[x0, inf]")
    assert "infinitely many times (it failed) the baseline's (median, 95% CI [inf, inf])" in report
    assert set(metrics["coverage"]) == {"double_integrator", "van_der_pol"}
    assert all(f"]({p})" in report for p in pngs)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["reason"] for s in samples)

    again = tmp_path / "again"
    assert eval_main(cli_args(workspace, again)) == 0
    second = json.loads((again / "metrics.json").read_text())
    assert second["models"]["tiny"]["summary"] == model["summary"]  # same seed, same model, greedy
    assert not list(again.glob("*.png"))  # no --save-plots, no figures


def test_cli_expected_value_decoding_answers_and_says_so(workspace, tmp_path):
    """The decoding itself is checked against a known distribution in test_decoding.py; here the flag reaches
    the answers through main_eval, the report says how they were written, and best-of-k still samples."""
    out = tmp_path / "expected"
    argv = cli_args(workspace, out, "--decoding", "expected_value", "--best-of-k", "2")
    assert eval_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["context"]["decoding"] == "expected_value"
    assert metrics["models"]["tiny"]["timing"]["answers"] == 4 and metrics["models"]["tiny best-of-2"]
    assert (
        "each control the expected value of the model's distribution over it"
        in (out / "report.md").read_text()
    )


def test_cli_best_of_k_adds_inference_time_rows(workspace, tmp_path):
    out = tmp_path / "best"
    assert eval_main(cli_args(workspace, out, "--best-of-k", "2", "--best-of-temperature", "0.9")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["tiny", "tiny best-of-2"]
    row = metrics["models"]["tiny best-of-2"]
    assert row["summary"]["all"]["samples"] == 4  # one chosen answer per problem
    assert row["timing"]["answers"] == 8  # the 2 samples drawn for each of the 4 problems
    about = row["best_of"]
    assert (about["k"], about["temperature"], about["samples_drawn"], about["greedy"]) == (2, 0.9, 2, "tiny")
    # 8 tokens never hold 50 controls: every answer fails, so best of 2 never beats greedy, and both fail
    assert about["beats_greedy"] == 0.0 and about["vs_greedy"]["both_failed"] == 4
    assert metrics["vs_best_baseline"]["tiny best-of-2"]["beats"] == "no"
    report = (out / "report.md").read_text()
    assert (
        "| tiny best-of-2 |" in report and "## Best of k" in report and "| tiny best-of-2 vs tiny |" in report
    )
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["model"] for s in samples].count("tiny best-of-2") == 4


def test_best_of_k_rows_choose_the_best_sample_of_each_problem(records):
    from lib.llm.evaluate import best_of_results

    def zeros_then_optimum(prompts):  # per problem: sample 0 does nothing, sample 1 is the optimum
        out = []
        for i, prompt in enumerate(prompts):
            record = next(r for r in records if r["prompt"] == prompt)
            out.append(exact_optimum(record) if i % 2 else wrap(np.zeros(record["horizon"]["steps"])))
        return out

    greedy = score_samples(
        records, answer_records(records, by_prompt(records, lambda r: r["completion"][0]["content"]))
    )
    samples = score_samples(records, answer_records(records, zeros_then_optimum, 2))
    calls = {"prompts": 2 * len(records), "seconds": 1.0}
    (result,) = best_of_results("m", "a model", greedy, samples, [2], 0.5, calls, seed=0)
    assert result["label"] == "m best-of-2" and result["calls"] is calls
    assert np.abs(result["rows"].metrics["gap"]).max() < 1e-9  # the optimum, picked on every problem
    # against the printed labels (rounded, within 1% of J*): better wherever rounding costs over 0.1%
    label_gaps = greedy.metrics["gap"]
    assert result["best_of"]["beats_greedy"] == pytest.approx(np.mean(label_gaps > 1e-3))
    assert result["best_of"]["vs_greedy"]["both_feasible"] == len(records)


def test_cli_replaces_its_own_previous_files_only(workspace, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert eval_main(cli_args(workspace, out, "--save-plots", "--plot-instances", "2")) == 0
    assert (out / "double_integrator_trajectory_1.png").is_file()
    assert eval_main(cli_args(workspace, out, "--save-plots", "--plot-instances", "1")) == 0
    assert not (out / "double_integrator_trajectory_1.png").exists()  # stale figure of the last run: gone
    assert (out / "notes.txt").read_text() == "mine"


def test_cli_compares_models_and_checks_format(workspace, tmp_path):
    out = tmp_path / "cmp"
    tiny = str(workspace / "tiny")
    argv = cli_args(workspace, out, "--save-plots", "--plot-instances", "1", "--labels", "a", "b")
    argv[1:2] = [tiny, tiny]
    assert eval_main(argv) == 0
    assert (out / "comparison.png").stat().st_size > 10_000
    assert set(json.loads((out / "metrics.json").read_text())["models"]) == {"a", "b"}
    fmt = tmp_path / "fmt"
    assert eval_main(cli_args(workspace, fmt, "--eval-mode", "format")) == 0
    rates = json.loads((fmt / "metrics.json").read_text())["models"]["tiny"]["format_rates"]
    assert rates["exact_control_count"] == 0.0


@pytest.mark.parametrize(
    "extra",
    [
        ["--samples-per-prompt", "4"],  # pass@k with greedy decoding
        ["--num-samples", "0"],
        ["--labels", "a", "b"],
        ["--system", "pendulum"],
        ["--dataset", "nope"],
        ["--eval-mode", "analyze"],
        ["--best-of-k", "2", "--eval-mode", "mpc"],  # best of k ranks open-loop answers only
        ["--best-of-k", "2", "--eval-mode", "format"],
        ["--best-of-k", "2048"],  # over 1024 samples a problem (the schema's limit)
        ["--best-of-k", "1"],  # best of 1 is a sampled answer, not a ranking
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(workspace, tmp_path, extra):
    out = tmp_path / "eval"
    assert eval_main(cli_args(workspace, out, *extra)) == EXIT_USAGE
    assert not out.exists()


@pytest.mark.parametrize("model", ["models/universal/sft/no-such-run", "no-such-org/no-such-model"])
def test_cli_missing_model_exits_2(workspace, tmp_path, model):
    """A mistyped run folder, or a hub name that is not in the cache (offline, as on this machine)."""
    argv = cli_args(workspace, tmp_path / "eval")
    argv[1] = model
    result = run_python(["scripts/main_eval.py", *argv], env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr and model.split("/")[-1] in result.stderr
    assert not (tmp_path / "eval").exists()


def test_cli_on_a_run_folder_draws_its_training_curves(workspace, tmp_path):
    models = tmp_path / "models"
    train = ["--config", "configs/profiles/cpu.yaml", f"model.name={workspace / 'tiny'}", "model.max_seq_length=2048",
             "data.dataset_name=mix", f"data.datasets_dir={workspace / 'datasets'}", f"run.models_dir={models}",
             "data.eval_max_samples=0", "sft.per_device_train_batch_size=2", "sft.max_steps=2", "sft.logging_steps=1",
             "run.run_id=r1"]  # fmt: skip
    assert call_script("main_trainer", train) == 0
    out = tmp_path / "eval"
    argv = cli_args(workspace, out, "--save-plots", "--plot-instances", "1", f"run.models_dir={models}")
    argv[1] = str(models / "universal" / "sft")  # a stage folder: its `latest` run
    assert eval_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["sft/r1"]
    assert (out / "training_curves_sft_r1.png").stat().st_size > 10_000
    argv[1] = str(models / "universal" / "sft" / "latest")  # the pointer file names the same run
    assert eval_main(argv) == 0
    assert list(json.loads((out / "metrics.json").read_text())["models"]) == ["sft/r1"]


# ---------------------------------------------------------------- flags are shorthands for config keys


def resolved(*argv):
    script = load_script("main_eval")
    return script.resolve_eval_config(script.parse_args(list(argv)))


def test_without_flags_the_settings_are_the_schema_defaults():
    from lib.common.config import load_schema, schema_defaults

    defaults = schema_defaults(load_schema("control"))
    cfg = resolved("--dataset", "mix")
    assert cfg["eval"] == defaults["eval"]
    assert (cfg["eval"]["batch_size"], cfg["eval"]["plot_instances"], cfg["seed"]) == (
        16,
        2,
        defaults["seed"],
    )


def test_each_flag_equals_its_key_value_override(tmp_path):
    flags = ["--model-path", "a", "b", "--labels", "x", "y", "--dataset", "mix", "--system", "van_der_pol",
             "--num-samples", "5", "--samples-per-prompt", "2", "--temperature", "0.5", "--batch-size", "3",
             "--max-new-tokens", "9", "--eval-mode", "mpc", "--replan-every", "5", "--save-plots",
             "--plot-instances", "1", "--output-dir", str(tmp_path), "--seed", "7", "--best-of-k", "4", "8",
             "--best-of-temperature", "0.7"]  # fmt: skip
    keys = ["eval.model_path=a,b", "eval.labels=x,y", "data.dataset_name=mix", "data.system=van_der_pol",
            "eval.num_samples=5", "eval.samples_per_prompt=2", "eval.temperature=0.5", "eval.batch_size=3",
            "eval.max_new_tokens=9", "eval.mode=mpc", "eval.replan_every=5", "eval.save_plots=true",
            "eval.plot_instances=1", f"eval.output_dir={tmp_path}", "seed=7", "eval.best_of_k=4,8",
            "eval.best_of_temperature=0.7"]  # fmt: skip
    assert resolved(*flags) == resolved(*keys)
    # expected value needs temperature 0 (refused with the sampling flags above when the config resolves)
    decoding = resolved("--dataset", "mix", "--decoding", "expected_value")
    assert decoding == resolved("data.dataset_name=mix", "eval.decoding=expected_value")
    assert decoding["eval"]["decoding"] == "expected_value"
    # the original project's spellings: --eval_mode, --model_path, ...
    underscores = ["--" + f[2:].replace("-", "_") if f.startswith("--") else f for f in flags]
    assert resolved(*underscores) == resolved(*keys)
    assert resolved("--dataset", "mix", "--temperature", "0.5", "--greedy")["eval"]["temperature"] == 0.0


def test_precedence_defaults_file_flags_key_value(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("data:\n  dataset_name: mix\neval:\n  batch_size: 4\n  plot_instances: 5\n")
    cfg = resolved("--config", str(config))
    assert (cfg["eval"]["batch_size"], cfg["eval"]["plot_instances"], cfg["eval"]["num_samples"]) == (
        4,
        5,
        100,
    )
    cfg = resolved("--config", str(config), "--batch-size", "6")
    assert (cfg["eval"]["batch_size"], cfg["eval"]["plot_instances"]) == (6, 5)  # flag > file
    cfg = resolved("--config", str(config), "--batch-size", "6", "eval.batch_size=8")
    assert cfg["eval"]["batch_size"] == 8  # key=value > flag
    cfg = resolved(
        "--model-path", "m", "eval.batch_size=2", "--dataset", "mix"
    )  # an override after --model-path
    assert (cfg["eval"]["model_path"], cfg["eval"]["batch_size"]) == (["m"], 2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "mix", "--batch-size", "0"], r"--batch-size 0: .*eval.batch_size"),
        (["--dataset", "mix", "--max-bytes", "100"], "--max-bytes applies to --eval-mode analyze only"),
        (["--dataset", "mix", "eval.batch_sise=2"], "did you mean 'eval.batch_size'"),
        (
            ["--eval-mode", "analyze", "--model-type", "blt", "--batch-size", "4"],
            "--batch-size applies to control",
        ),
        (["--model-type", "blt", "--max-bytes", "100"], "evaluated with --eval-mode analyze"),
    ],
)
def test_bad_settings_are_usage_errors_naming_flag_or_key(argv, message):
    from lib.common.errors import UsageError

    with pytest.raises(UsageError, match=message):
        resolved(*argv)


# ---------------------------------------------------------------- GRPO - SFT, paired


def test_paired_difference_pairs_problems_and_skips_unscored_ones():
    from lib.llm.evaluation import paired_difference

    before = np.array([0.1, 0.2, 0.4, 0.8, np.nan, 1.6])
    after = np.array([0.05, 0.1, 0.2, 0.4, 0.3, np.nan])  # every scored problem halved
    d = paired_difference(before, after, seed=1)
    assert d["n"] == 4  # the problems where one answer did not parse are left out, not counted as 0
    assert d["mean_diff"] == pytest.approx(-0.1875) and d["median_diff"] == pytest.approx(-0.15)
    assert d["median_change"] == pytest.approx(-0.5)
    assert d["median_change_ci"] == pytest.approx([-0.5, -0.5])  # halved on every resample of the pairs
    low, high = d["mean_diff_ci"]
    assert low < d["mean_diff"] < high < 0  # every difference is negative, so is every resampled mean
    same = paired_difference(before, before, seed=1)
    assert same["mean_diff"] == 0 and same["median_change"] == 0 and same["mean_diff_ci"] == [0, 0]
    assert paired_difference(np.array([np.nan]), np.array([1.0]))["n"] == 0
