"""Training recipes on a tiny model: SFT then GRPO, run folders, resume after SIGTERM, and bad input.

The tiny model (2 layers, hidden 32, a BPE tokenizer trained on the dataset's text) is randomly
initialised, so its numbers are checkable: the first SFT losses are close to ln(vocabulary size).
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S, ROOT, call_script, load_script, make_dataset, read_records, tiny_model_on

from lib.common.errors import EXIT_INTERRUPTED, EXIT_USAGE, run_cli


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A two-system dataset and a tiny model trained on its text, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("training")
    mix = make_dataset(root, "mix", ["double_integrator", "van_der_pol"], 21, 3)  # 24 records, 90% train
    tiny_model_on(root / "tiny", read_records(mix, "train"))
    return root


def overrides(root: Path, *extra: str) -> list[str]:
    return [
        f"model.name={root / 'tiny'}",
        "model.max_seq_length=2048",
        "data.dataset_name=mix",
        f"data.datasets_dir={root / 'datasets'}",
        f"run.models_dir={root / 'models'}",
        "data.eval_max_samples=2",
        "sft.per_device_train_batch_size=2",
        "sft.max_steps=2",
        "sft.logging_steps=1",
        "grpo.max_steps=2",
        "grpo.per_device_train_batch_size=4",  # 4 completions per step = 2 prompts x num_generations 2
        "grpo.num_generations=2",
        "grpo.max_completion_length=16",
        *extra,
    ]


def trainer_main(argv: list[str]) -> int:
    return call_script("main_trainer", argv)


def test_both_stages_write_runs_and_move_latest(workspace):
    """Also the control metrics: with eval.every_steps=2 the watch problems are answered before step 1 and
    after step 2, GRPO's own eval.stage_every_steps.grpo=1 adds step 1 there, and the numbers reach
    log_history.json, the TensorBoard event files in the run folder and training_curves.png."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    watch = (
        "eval.every_steps=2",
        "eval.stage_every_steps.grpo=1",
        "eval.watch_problems=3",
        "eval.max_new_tokens=24",
        "run.report_to=tensorboard",
    )
    code = trainer_main(
        [
            "--config",
            "configs/profiles/cpu.yaml",
            *overrides(workspace, "training_type=both", "run.run_id=r1", *watch),
        ]
    )
    assert code == 0
    sft, grpo = workspace / "models/universal/sft", workspace / "models/universal/grpo"
    assert (sft / "latest").read_text().strip() == "r1" and (grpo / "latest").read_text().strip() == "r1"
    for run in (sft / "r1", grpo / "r1"):
        info = json.loads((run / "run_info.json").read_text())
        assert info["status"] == "completed" and info["step"] == 2
        assert info["packages"]["trl"] and info["git_commit"] and info["device"].startswith("device=cpu")
        assert (run / "model" / "adapter_config.json").is_file() and (
            run / "model" / "tokenizer.json"
        ).is_file()
        assert json.loads((run / "config.json").read_text())["training_type"] == "both"
        assert "main_trainer.py" in (run / "command.txt").read_text()
        assert (run / "checkpoints" / "checkpoint-2").is_dir()
    assert json.loads((grpo / "r1" / "run_info.json").read_text())["init_run"] == str(sft / "r1")

    # the numbers: a random model starts near ln(vocab); every reward is logged and bounded
    vocab = json.loads((workspace / "tiny" / "config.json").read_text())["vocab_size"]
    first_loss = next(
        h["loss"] for h in json.loads((sft / "r1" / "log_history.json").read_text()) if "loss" in h
    )
    assert abs(first_loss - math.log(vocab)) < 0.5
    metrics = json.loads((grpo / "r1" / "metrics.json").read_text())
    for name in ("format", "feasibility", "optimality", "terminal"):
        assert 0.0 <= metrics[f"rewards/{name}_reward"] <= 1.0
    history = json.loads((grpo / "r1" / "log_history.json").read_text())
    assert any("rewards/optimality_reward/mean" in h for h in history)

    for run in (sft / "r1", grpo / "r1"):
        history = json.loads((run / "log_history.json").read_text())
        watched = [h for h in history if "control/parsed" in h]
        # before training, then every 2 steps (SFT) or every step (GRPO's own cadence)
        assert [h["step"] for h in watched] == ([0, 1, 2] if run.parent.name == "grpo" else [0, 2])
        assert [h["step"] for h in history if "loss" in h] == [1, 2]  # the trainer's own logs are all kept
        assert all(0.0 <= h["control/parsed"] <= 1.0 and h["control/seconds"] > 0 for h in watched)
        if (
            run.parent.name == "grpo"
        ):  # GRPO's own step logs keep their rewards (the callback logs beside them)
            assert all("rewards/format_reward/mean" in h for h in history if "loss" in h)
        assert list((run / "tensorboard").glob("events.out.tfevents.*")), (
            f"no event file in {run}/tensorboard"
        )
        scalars = EventAccumulator(str(run / "tensorboard")).Reload()
        parsed = [(e.step, e.value) for e in scalars.Scalars("train/control/parsed")]
        assert parsed == [(h["step"], pytest.approx(h["control/parsed"])) for h in watched]
        # the baselines' bar on the same watch problems: logged once, at the first measurement
        bar = [h for h in history if "control/baseline/nearest/success@10%" in h]
        assert [h["step"] for h in bar] == [0]
        assert len(scalars.Scalars("train/control/baseline/nearest/success@10%")) == 1
        assert (run / "training_curves.png").stat().st_size > 10_000
        info = json.loads((run / "run_info.json").read_text())
        assert (info["prompt_style"], info["reasoning"]) == ("full", "full")


def test_grpo_starts_from_latest_sft_and_an_existing_run_id_is_refused(workspace):
    args = [
        "--config",
        "configs/profiles/cpu.yaml",
        *overrides(workspace, "training_type=grpo", "run.run_id=g2"),
    ]
    assert trainer_main(args) == 0
    info = json.loads((workspace / "models/universal/grpo/g2/run_info.json").read_text())
    sft_latest = (workspace / "models/universal/sft/latest").read_text().strip()
    assert info["init_run"] == str(workspace / "models/universal/sft" / sft_latest)
    assert trainer_main(args) == EXIT_USAGE  # same run id again, without --resume


@pytest.mark.slow  # trains a model in a subprocess: 10-45 s here (make test-slow)
def test_sigterm_leaves_a_resumable_run_that_finishes_at_the_same_step(workspace):
    args = [
        sys.executable,
        "scripts/main_trainer.py",
        "--config",
        "configs/profiles/cpu.yaml",
        *overrides(
            workspace, "run.run_id=k1", "sft.max_steps=40", "sft.save_steps=5", "sft.save_total_limit=1"
        ),
    ]
    run_dir = workspace / "models/universal/sft/k1"
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (run_dir / "checkpoints" / "checkpoint-5").exists() and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["status"] == "interrupted" and info["stopped_by"] == "SIGTERM"
    stopped_at = info["step"]
    assert 5 <= stopped_at < 40
    assert (run_dir / "checkpoints" / f"checkpoint-{stopped_at}").is_dir()  # saved at the step it stopped
    latest = run_dir.parent / "latest"
    assert not (run_dir / "model").exists()
    assert not latest.exists() or latest.read_text().strip() != "k1"  # `latest` names completed runs only

    resumed = subprocess.run(
        [*args, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert (info["status"], info["step"], info["resumed"]) == ("completed", 40, 1)
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    assert (run_dir.parent / "latest").read_text().strip() == "k1"


@pytest.mark.slow  # trains a model in a subprocess: 10-45 s here (make test-slow)
def test_a_trainer_whose_reader_goes_away_still_completes_its_run(workspace):
    """`main_trainer.py ... 2>&1 | head -c 300`: the console is lost after 300 bytes; the run must still
    train to its last step, save its model and move `latest` (not exit 0 half-way with status 'running')."""
    args = [sys.executable, "scripts/main_trainer.py", "--config", "configs/profiles/cpu.yaml",
            *overrides(workspace, "run.run_id=pipe1", "sft.max_steps=3", "training_type=sft")]  # fmt: skip
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    head = process.stdout.read(300)
    process.stdout.close()  # the reader goes away, as `head -c 300` does
    assert process.wait(timeout=HANG_GUARD_S) == 0, head
    run_dir = workspace / "models/universal/sft/pipe1"
    info = json.loads((run_dir / "run_info.json").read_text())
    assert (info["status"], info["step"]) == ("completed", 3)
    assert (run_dir / "model").is_dir() and (run_dir.parent / "latest").read_text().strip() == "pipe1"


def test_train_single_system_maps_the_original_flags(workspace):
    code = run_cli(
        load_script("train_single_system").main,
        [
            "--system",
            "van_der_pol",
            "--dataset-name",
            "mix",
            "--training-type",
            "sft",
            "--sft-max-samples",
            "4",
            "--lora-rank",
            "4",
            "--max-seq-length",
            "2048",
            "--run-id",
            "single",
            f"model.name={workspace / 'tiny'}",
            f"data.datasets_dir={workspace / 'datasets'}",
            f"run.models_dir={workspace / 'models'}",
            "sft.per_device_train_batch_size=2",
            "device.type=cpu",
        ],
    )
    assert code == 0
    run = workspace / "models/van_der_pol/sft/single"
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["data"]["system"], cfg["data"]["sft_max_samples"], cfg["model"]["lora"]["rank"]) == (
        "van_der_pol",
        4,
        4,
    )
    assert json.loads((run / "run_info.json").read_text())["train_records"] == 4
    assert json.loads((run / "model" / "adapter_config.json").read_text())["r"] == 4


def test_every_flag_maps_onto_a_schema_key():
    from lib.common.config import load_schema, schema_node

    for flag, key in load_script("main_trainer").FLAG_KEYS.items():
        assert schema_node(load_schema("control"), key) is not None, f"--{flag} -> {key}"


def _corrupt_field(workspace: Path) -> str:
    """A copy of the dataset whose records lack `completion`, with checksums that match (a real old format)."""
    source, target = workspace / "datasets" / "mix", workspace / "datasets" / "nocompletion"
    target.mkdir(exist_ok=True)
    info = json.loads((source / "info.json").read_text())
    for split in ("train", "eval"):
        lines = [json.loads(x) for x in (source / f"{split}.jsonl").read_text().splitlines()]
        data = "".join(json.dumps({k: v for k, v in r.items() if k != "completion"}) + "\n" for r in lines)
        (target / f"{split}.jsonl").write_text(data)
        info["files"][f"{split}.jsonl"]["sha256"] = hashlib.sha256(data.encode()).hexdigest()
    (target / "info.json").write_text(json.dumps(info))
    return "nocompletion"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["data.dataset_name=nope"], "dataset 'nope' not found"),
        (["grpo.rewards.optimalty=1"], "did you mean 'grpo.rewards.optimality'"),
        (["device.type=gpu"], "'device.type' must be one of"),
        (["data.system=rocket"], "rocket"),
        (["model.name=/no/such/model"], "model folder not found"),
        (["model.max_seq_length=64"], "longer than model.max_seq_length = 64"),
        (
            [
                "grpo.rewards.format=0",
                "grpo.rewards.feasibility=0",
                "grpo.rewards.optimality=0",
                "grpo.rewards.terminal=0",
                "training_type=grpo",
                "grpo.init_from=base",
            ],
            "every GRPO reward has weight 0",
        ),
        (["training_type=grpo", "run.models_dir=/tmp/empty-models-dir-for-test"], "no completed SFT run"),
        # refused before the training, not at the pipeline's evaluation after it
        (["eval.decoding=expected_value", "eval.temperature=0.5"], "eval.decoding is expected_value"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(workspace, capsys, extra, message):
    code = trainer_main(["--config", "configs/profiles/cpu.yaml", *overrides(workspace, *extra)])
    assert code == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_a_record_missing_a_field_exits_2(workspace, capsys):
    name = _corrupt_field(workspace)
    assert (
        trainer_main(
            ["--config", "configs/profiles/cpu.yaml", *overrides(workspace, f"data.dataset_name={name}")]
        )
        == 2
    )
    assert "completion" in capsys.readouterr().err


def test_unsloth_requested_without_it_installed_is_a_usage_error(workspace):
    from lib.common.config import resolve_config
    from lib.common.device import DeviceSetup
    from lib.common.errors import describe_failure
    from lib.llm.training import run_training

    cfg = resolve_config("configs/profiles/cpu.yaml", overrides(workspace))
    setup = DeviceSetup(device="cuda", precision="bf16", unsloth=True, vllm=False)  # stands in for a GPU node
    with pytest.raises(ModuleNotFoundError) as info:
        run_training(cfg, setup, ["test"])
    assert describe_failure(info.value).kind == "missing-backend"


@pytest.mark.slow
def test_original_smoke_command_trains_the_embedded_model(tmp_path):
    """The original project's smoke command on SmolLM2-135M on the CPU (about 2 minutes on 2 cores)."""
    datasets, models = tmp_path / "datasets", tmp_path / "models"
    assert (
        load_script("generate_data").main(
            [
                "--systems",
                "double_integrator",
                "--total-samples",
                "10",
                "--dataset-name",
                "test_di",
                "--output-dir",
                str(datasets),
            ]
        )
        == 0
    )
    result = subprocess.run(
        [
            sys.executable,
            "scripts/train_single_system.py",
            "--system",
            "double_integrator",
            "--dataset-name",
            "test_di",
            "--training-type",
            "sft",
            "--sft-max-samples",
            "5",
            f"data.datasets_dir={datasets}",
            f"run.models_dir={models}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = (
        models
        / "double_integrator"
        / "sft"
        / (models / "double_integrator" / "sft" / "latest").read_text().strip()
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and math.isfinite(metrics["train_loss"])


@pytest.mark.slow
def test_training_benchmark_quick_run(workspace, tmp_path):
    """`make bench-train` end to end with the tiny model and a few steps (the real run takes ~40 min): the
    from-scratch model against the matmul limit, then SmolLM2's stages."""
    import platform

    from lib.common.device import cpu_has_bf16

    args = f"--model {workspace / 'tiny'} --sft-steps 2 --grpo-steps 1 --grpo-completion 8 --output-dir {tmp_path}"
    scratch_args = f"--steps 2 --rounds 1 --warmup 1 --records 40 --batch 8 --output-dir {tmp_path}"
    result = subprocess.run(
        ["make", "bench-train", f"ARGS={args}", f"SCRATCH_ARGS={scratch_args}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "training.json").read_text())
    assert data["sft"]["tokens_per_s"] > 0 and data["grpo"]["seconds_per_step"] > 0
    assert data["sft"]["peak_rss_mb"] > 100 and (tmp_path / "sft_loss_curve.png").stat().st_size > 1000
    scratch = json.loads((tmp_path / "scratch_training.json").read_text())
    # a Llama's training step: 6 FLOPs per weight a token, plus attention (tests/llm/test_throughput.py)
    assert 6 * scratch["parameters"] * 0.9 < scratch["flops_per_token"] < 6 * scratch["parameters"] * 2
    assert all(scratch["matmul_gflops"][shape] > 0 for shape in scratch["matmul_gflops"])
    bf16 = cpu_has_bf16(platform.system(), platform.machine())  # the bf16 case runs only where it is fast
    assert {name: case["tokens_per_s"] > 0 for name, case in scratch["cases"].items()} == {
        "trainer": True,
        "checkpointed": True,
        "bare": True,
        "compiled": True,
        **({"bf16": True} if bf16 else {}),
    }
    table = (tmp_path / "scratch_training.md").read_text()
    assert "| trainer |" in table and ("| bf16 |" in table) is bf16


def test_verify_grpo_format_loads_the_latest_grpo_run(workspace, tmp_path):
    """`make verify-grpo`'s default: the newest completed GRPO run, adapters merged along its chain."""
    trainer_main(
        [
            "--config",
            "configs/profiles/cpu.yaml",
            *overrides(workspace, "training_type=both", "run.run_id=v1"),
        ]
    )
    main = load_script("verify_grpo_format").main
    code = run_cli(
        main,
        ["--num-tests", "2", "--max-new-tokens", "4", "--output-dir", str(tmp_path), "--system",
         "double_integrator", f"run.models_dir={workspace / 'models'}", "device.type=cpu"],
    )  # fmt: skip
    assert code == 0
    (entry,) = json.loads((tmp_path / "metrics.json").read_text())["models"].values()
    assert entry["model"] == f"run {workspace / 'models/universal/grpo/v1'}"


# ---------------------------------------------------------------- control metrics during training


@pytest.fixture(scope="module")
def lean(tmp_path_factory):
    """Compact prompts and empty reasoning: records short enough for a from-scratch model to learn in seconds."""
    root = tmp_path_factory.mktemp("lean")
    make_dataset(
        root, "lean", ["double_integrator_short"], 64, 4, "--prompt-style", "compact", "--reasoning", "none"
    )
    return root


@pytest.mark.slow  # trains a model in a subprocess: 10-45 s here (make test-slow)
def test_sft_learns_to_end_the_answer_with_the_chat_end_token_and_generation_stops_there(lean):
    """model.name=scratch: a small model from random weights learns the answer's format, its control
    metrics show it (parsed 0 -> 1), and its answers stop on <|im_end|> well before max_new_tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lib.llm.models import embedded_model_dir

    extra = ("training_type=sft", "run.run_id=stop", "model.name=scratch", "model.lora.enabled=false",
             "model.scratch.hidden_size=64", "model.scratch.layers=2", "sft.max_steps=80",
             "sft.per_device_train_batch_size=16", "sft.learning_rate=3e-3", "data.dataset_name=lean",
             "eval.every_steps=40", "eval.watch_problems=4", "eval.max_new_tokens=96")  # fmt: skip
    assert trainer_main(["--config", "configs/profiles/cpu.yaml", *overrides(lean, *extra)]) == 0
    run = lean / "models/universal/sft/stop"
    watched = [h for h in json.loads((run / "log_history.json").read_text()) if "control/parsed" in h]
    assert [h["step"] for h in watched] == [0, 40, 80]
    assert watched[0]["control/parsed"] == 0.0 and watched[-1]["control/parsed"] == 1.0

    record = read_records(lean / "datasets" / "lean", "train")[0]
    # what SFT trains on is the chat text of prompt + completion minus the prompt's with the generation
    # prompt (TRL's completion mask): it ends with <|im_end|>, for this model's template and SmolLM2's
    for source in (run / "model", embedded_model_dir()):
        tokenizer = AutoTokenizer.from_pretrained(source)
        prompt = tokenizer.apply_chat_template(record["prompt"], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(record["prompt"] + record["completion"], tokenize=False)
        assert full.startswith(prompt) and tokenizer.eos_token == "<|im_end|>"
        assert full[len(prompt) :].rstrip("\n").endswith("</CONTROLS><|im_end|>")

    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    for record in read_records(lean / "datasets" / "lean", "eval"):
        text = tokenizer.apply_chat_template(record["prompt"], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(ids, max_new_tokens=96, do_sample=False)[0, ids.shape[1] :].tolist()
        assert out[-1] == tokenizer.eos_token_id and len(out) < 96  # it stopped on <|im_end|> by itself
        answer = tokenizer.decode(out, skip_special_tokens=True)
        assert answer.startswith("<REASONING></REASONING><CONTROLS>") and answer.endswith("</CONTROLS>")


# ---------------------------------------------------------------- checkpoints, locks, full disks (issue 21)


def _checkpoint(run_dir: Path, step: int, complete: bool) -> Path:
    """A hand-made checkpoint-<step>: a trainer's files, and the marker only when the save completed."""
    from lib.llm.stages import CHECKPOINT_DONE

    folder = run_dir / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    if complete:
        (folder / CHECKPOINT_DONE).write_text("{}")
    return folder


def test_resume_picks_the_newest_complete_checkpoint_and_drops_unfinished_ones(tmp_path, caplog):
    from lib.common.runs import start_run_folder
    from lib.llm.stages import discard_incomplete_checkpoints, last_checkpoint, prune_checkpoints

    run_dir = tmp_path / "sft" / "k1"
    start_run_folder(run_dir, {}, ["train"], {})
    assert last_checkpoint(run_dir) is None
    for step, complete in ((2, True), (4, True), (6, False), (10, False)):  # killed while saving 6 and 10
        _checkpoint(run_dir, step, complete)
    (run_dir / "checkpoints" / "checkpoint-x").mkdir()  # not a numbered checkpoint: ignored
    assert last_checkpoint(run_dir) == str(run_dir / "checkpoints" / "checkpoint-4")
    assert "skipping unfinished checkpoint(s) checkpoint-6, checkpoint-10" in caplog.text
    discard_incomplete_checkpoints(run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-x",
    ]
    _checkpoint(run_dir, 8, True)
    prune_checkpoints(run_dir, keep=2)  # the trainer's own rotation is off: it counts unfinished ones too
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "checkpoint-4",
        "checkpoint-8",
        "checkpoint-x",
    ]

    user = tmp_path / "mine"  # not a run folder of ours: nothing is removed there
    _checkpoint(user, 3, False)
    discard_incomplete_checkpoints(user)
    prune_checkpoints(user, keep=0)
    assert (user / "checkpoints" / "checkpoint-3").is_dir()


def test_a_second_trainer_on_a_locked_run_exits_2_naming_the_first(tmp_path, capsys):
    """The first trainer is a process that holds the run's lock (lib.common.runs.run_lock, as a trainer
    takes it before any work); the second, started on the same run_id, exits 2 naming its pid."""
    models = tmp_path / "models"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from lib.common.runs import run_lock\n"
         f"with run_lock(Path({str(models / 'universal/sft/dup')!r})):\n print('held', flush=True); sys.stdin.read()"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        code = trainer_main(["--config", "configs/profiles/cpu.yaml", "training_type=sft", "run.run_id=dup",
                             f"run.models_dir={models}", "data.dataset_name=none"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == EXIT_USAGE, err
        assert f"is being trained by another trainer: pid {holder.pid} on host" in err and "fix:" in err
        assert "Traceback" not in err and not (models / "universal/sft/dup").exists()
    finally:
        holder.communicate("")
    assert holder.returncode == 0 and not list((models / "universal/sft").iterdir())  # released


@pytest.mark.parametrize(
    ("setting", "stage", "message"),
    [
        ("models_dir_file", "sft", "run.models_dir"),
        ("latest_file", "sft", "did not write"),
        ("latest_dir", "sft", "is a folder"),
        ("latest_file", "grpo", "did not write"),  # training_type=both: refused before SFT trains
    ],
)
def test_a_bad_output_place_is_refused_before_any_work(workspace, tmp_path, capsys, setting, stage, message):
    """run.models_dir that is a file, or a `latest` that is not ours (a user's file, a folder): exit 2 at
    the start, and the user's file stays as it was."""
    models = tmp_path / "models"
    latest = models / "universal" / stage / "latest"
    latest.parent.mkdir(parents=True)
    if setting == "models_dir_file":
        models = tmp_path / "a_file"
        models.write_text("mine")
    elif setting == "latest_file":
        latest.write_text("my own notes\n")
    else:
        latest.mkdir()
    args = overrides(workspace, "training_type=both", "run.run_id=b1", f"run.models_dir={models}")
    assert trainer_main(["--config", "configs/profiles/cpu.yaml", *args]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "fix:" in err and "Traceback" not in err
    assert not (models / "universal/sft/b1").exists()
    if setting == "latest_file":
        assert latest.read_text() == "my own notes\n"


def _kill_when(process: subprocess.Popen, appeared, what: str) -> None:
    """SIGKILL `process` the moment appeared() is true (an event, polled), as a crash or OOM killer would."""
    while not appeared():
        assert process.poll() is None, f"the trainer ended before {what}: {process.stderr.read()[-3000:]}"
        time.sleep(0.01)
    process.kill()
    process.wait(timeout=HANG_GUARD_S)


@pytest.mark.slow  # trains in a subprocess, then resumes: about 30-60 s here per stage
@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_kill_9_while_saving_a_checkpoint_then_resume_reaches_the_planned_step(workspace, stage):
    """kill -9 the moment checkpoints/checkpoint-2 appears (the trainer is writing it in place); --resume
    then skips it if it is unfinished, takes over the dead trainer's lock, and completes step 6."""
    run_id = f"kill9{stage}"
    args = [sys.executable, "scripts/main_trainer.py", "--config", "configs/profiles/cpu.yaml",
            *overrides(workspace, f"training_type={stage}", f"run.run_id={run_id}", "grpo.init_from=base",
                       f"{stage}.max_steps=6", f"{stage}.save_steps=2", f"{stage}.save_total_limit=1")]  # fmt: skip
    run_dir = workspace / "models/universal" / stage / run_id
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _kill_when(process, (run_dir / "checkpoints" / "checkpoint-2").exists, "checkpoint-2")
    assert json.loads((run_dir / "run_info.json").read_text())["status"] == "running"
    unfinished = not (run_dir / "checkpoints/checkpoint-2/checkpoint_complete.json").exists()
    resumed = subprocess.run(
        [*args, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "took over the lock" in resumed.stderr
    assert ("skipping unfinished checkpoint(s) checkpoint-2" in resumed.stderr) == unfinished
    info = json.loads((run_dir / "run_info.json").read_text())
    assert (info["status"], info["step"], info["resumed"]) == ("completed", 6, 1)
    assert [p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")] == ["checkpoint-6"]  # limit 1
    assert not list(run_dir.parent.glob(".*.lock"))


@pytest.mark.slow  # trains in a subprocess twice: about 30-60 s here
def test_a_full_disk_fails_with_a_message_marks_the_run_failed_and_resumes_once_freed(workspace, tmp_path):
    """A real tmpfs (tests/small_disk.py) holds run.models_dir; once the run has started, the disk is filled
    but for a few KB, so the first checkpoint cannot be written: exit 1 with the disk-full message (no
    traceback), run_info.json 'failed' with that reason, no half-written checkpoint or temporary file left;
    with the space freed, --resume completes the run."""
    from small_disk import run_until_disk_fills, small_disk

    with small_disk(tmp_path / "disk", "64m") as disk:
        args = [sys.executable, "scripts/main_trainer.py", "--config", "configs/profiles/cpu.yaml",
                *overrides(workspace, "training_type=sft", "run.run_id=full", f"run.models_dir={disk}",
                           "sft.max_steps=4", "sft.save_steps=2")]  # fmt: skip
        run_dir = disk / "universal/sft/full"
        returncode, stderr, ballast = run_until_disk_fills(args, ROOT, run_dir, disk)
        assert returncode == 1, stderr[-3000:]
        assert "Traceback" not in stderr and f"error: the disk is full while writing {run_dir} (" in stderr
        assert "free there now" in stderr and "fix: free space" in stderr
        info = json.loads((run_dir / "run_info.json").read_text())
        assert info["status"] == "failed" and info["reason"].startswith("the disk is full")
        left = [p.relative_to(disk).as_posix() for p in disk.rglob("*")]
        assert not [name for name in left if "checkpoint-" in name or ".tmp" in name or ".partial" in name], (
            left
        )
        assert not list(run_dir.parent.glob(".*.lock"))

        ballast.unlink()  # space freed
        resumed = subprocess.run(
            [*args, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        info = json.loads((run_dir / "run_info.json").read_text())
        assert (info["status"], info["step"], info["resumed"]) == ("completed", 4, 1)


def test_gradient_checkpointing_is_trls_default_and_the_scratch_recipes_turn_it_off(tmp_path):
    """The recompute of activations costs the 0.6 M-parameter model ~1.3x its step time and saves it nothing
    (make bench-train); SmolLM2 and the GPU recipes keep TRL's default."""
    from lib.common.config import resolve_config
    from lib.common.device import DeviceSetup
    from lib.llm import grpo, sft
    from lib.llm.stages import common_args

    setup = DeviceSetup(device="cpu", precision="fp32", unsloth=False, vllm=False)
    for config, expected in [
        ("configs/smollm2/cpu.yaml", True),
        ("configs/scratch/hour_cpu.yaml", False),
        ("configs/scratch/demo_cpu.yaml", False),
    ]:
        cfg = resolve_config(ROOT / config)
        for stage in (sft, grpo):
            name = stage.__name__.rsplit(".", 1)[-1]
            args = stage.arguments(cfg, common_args(cfg[name], cfg, setup, tmp_path), setup)
            assert args.gradient_checkpointing is expected, (config, name)


def test_warmup_stable_decay_holds_the_rate_then_anneals_it_over_the_last_decay_ratio(tmp_path):
    """The demo's SFT learns the law late, at a held rate, and needs an anneal at the end: the schedule the
    trainer builds from our arguments holds the peak until the last decay_ratio of the steps, then falls to
    0; without max_steps, or with a decay that overlaps the warm-up, the config is refused before a model
    loads."""
    import torch
    from transformers import get_scheduler

    from lib.common.config import resolve_config
    from lib.common.device import DeviceSetup
    from lib.common.errors import ConfigError
    from lib.llm import sft
    from lib.llm.stages import common_args

    setup = DeviceSetup(device="cpu", precision="fp32", unsloth=False, vllm=False)
    cfg = resolve_config(
        ROOT / "configs/scratch/demo_cpu.yaml",
        [
            "sft.lr_scheduler_type=warmup_stable_decay",
            "sft.decay_ratio=0.2",
            "sft.max_steps=100",
            "sft.warmup_ratio=0.05",
            "sft.learning_rate=2e-3",
        ],
    )
    args = sft.arguments(cfg, common_args(cfg["sft"], cfg, setup, tmp_path), setup)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    schedule = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.get_warmup_steps(args.max_steps),
        num_training_steps=args.max_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    rates = []
    for _ in range(args.max_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] < 2e-3 and rates[5:80] == [pytest.approx(2e-3)] * 75  # 5 warm-up, then held to step 80
    assert all(a > b for a, b in zip(rates[80:], rates[81:], strict=False)) and rates[-1] < 2e-3 * 0.01

    with pytest.raises(ConfigError, match="sft.max_steps is -1"):
        resolve_config(
            ROOT / "configs/scratch/demo_cpu.yaml",
            ["sft.lr_scheduler_type=warmup_stable_decay", "sft.max_steps=-1"],
        )
    with pytest.raises(ConfigError, match="warmup_ratio \\+ sft.decay_ratio = 0.5 \\+ 0.6 > 1"):
        resolve_config(
            ROOT / "configs/scratch/demo_cpu.yaml",
            ["sft.lr_scheduler_type=warmup_stable_decay", "sft.warmup_ratio=0.5", "sft.decay_ratio=0.6"],
        )


def test_first_control_weight_multiplies_the_loss_on_exactly_the_first_controls_tokens(workspace, tmp_path):
    """sft.first_control_weight=4: SFTTrainer's training loss is, to float precision, the hand-computed mean
    over the completion tokens with weight 4 on the tokens that write u_0 (the tiny model's own BPE, which
    splits and merges the tags its own way) and 1 elsewhere; the eval loss stays the plain mean; weight 1 is
    TRL's own loss."""
    import torch
    from transformers import AutoModelForCausalLM

    from lib.common.config import resolve_config
    from lib.common.device import DeviceSetup
    from lib.llm import sft
    from lib.llm.models import load_tokenizer
    from lib.llm.stages import common_args

    setup = DeviceSetup(device="cpu", precision="fp32", unsloth=False, vllm=False)
    records = read_records(workspace / "datasets" / "mix", "train")[:4]
    first_controls = {r["completion"][0]["content"].split("<CONTROLS>")[1].split(",")[0] for r in records}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(workspace / "tiny")

    def loss_of(weight: float, training: bool):
        cfg = resolve_config(None, overrides(workspace, f"sft.first_control_weight={weight}",
                                             "sft.per_device_train_batch_size=4"))  # fmt: skip
        tokenizer = load_tokenizer(str(workspace / "tiny"), cfg)
        args = sft.arguments(cfg, common_args(cfg["sft"], cfg, setup, tmp_path / str(weight)), setup)
        trainer = sft.trainer(cfg, model, tokenizer, None, args, records, [], [])
        batch = next(iter(trainer.get_train_dataloader()))
        model.train(training)
        with torch.no_grad():
            return trainer.compute_loss(model, batch).item(), batch, tokenizer

    weighted, batch, tokenizer = loss_of(4, training=True)
    plain, plain_batch, _ = loss_of(1, training=True)
    assert torch.equal(batch["input_ids"], plain_batch["input_ids"])  # same records, same order

    labels, ids = batch["labels"], batch["input_ids"]
    weights = torch.ones(labels.shape)
    for row in range(len(ids)):
        marked = [t for t in range(ids.shape[1]) if labels[row, t] != -100]
        text = tokenizer.decode(ids[row, marked])
        u0 = text.split("<CONTROLS>")[1].split(",")[0]
        assert u0 in first_controls
        # the first tokens, from the completion's start, whose text ends inside u_0 or at its end
        upto = text.index("<CONTROLS>") + len("<CONTROLS>") + len(u0)
        start = text.index("<CONTROLS>") + len("<CONTROLS>")
        for t in range(len(marked)):
            before, after = (len(tokenizer.decode(ids[row, marked[:k]])) for k in (t, t + 1))
            if before < upto and after > start:
                weights[row, marked[t]] = 4
        chosen = tokenizer.decode(ids[row][weights[row] == 4])
        assert u0 in chosen and len(chosen) <= len(u0) + len("<CONTROLS>") + 1, (u0, chosen)

    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
    target = labels[:, 1:]
    mask = target != -100
    log_probs = torch.log_softmax(logits.float(), -1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    by_hand = -(weights[:, 1:] * log_probs * mask).sum() / mask.sum()
    assert weighted == pytest.approx(by_hand.item(), rel=1e-4)
    assert plain == pytest.approx((-(log_probs * mask).sum() / mask.sum()).item(), rel=1e-4)
    assert weighted > plain  # the weights did something: u_0 is a few tokens of a long completion
    assert loss_of(4, training=False)[0] == pytest.approx(plain, rel=1e-6)


def test_first_control_weight_is_refused_where_the_trainer_gives_no_per_token_log_probs():
    """A trainer whose forward builds its loss without TRL's fused head (older TRL, Unsloth) would leave the
    weight silently unused: refused with the fix instead. The extra forward for logits passes through."""
    from types import SimpleNamespace

    import torch

    from lib.common.errors import UsageError
    from lib.llm.sft import ScaledLogProbs

    plain = SimpleNamespace(loss=torch.tensor(1.0), log_probs=None)
    wrapped = ScaledLogProbs(lambda **kwargs: plain, torch.ones(1, 3))
    assert wrapped(input_ids=None) is plain
    with pytest.raises(UsageError, match="the weight would be ignored") as refused:
        wrapped(input_ids=None, fused_lm_head=True)
    assert "sft.first_control_weight=1" in refused.value.fix
