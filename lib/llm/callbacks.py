"""The callbacks every stage's trainer gets: stop on a signal (save a checkpoint first), mark each saved
checkpoint complete (then prune old ones), TensorBoard into the run folder, and the control metrics of
eval.every_steps (the watch problems answered and scored as main_eval.py scores them, logged beside the
trainer's own entries; docs/ARCHITECTURE.md, "Run folders")."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from lib.common.atomic import write_json_atomic
from lib.common.config import repo_path
from lib.common.distributed import Processes
from lib.common.runs import StopOnSignal, now
from lib.control.dataset_format import load_records
from lib.llm.stages import CHECKPOINT_DONE, prune_checkpoints

log = logging.getLogger(__name__)


def stop_callback(stop: StopOnSignal):
    """A TrainerCallback that, once `stop` caught a signal, saves a checkpoint at the end of the step and
    stops the trainer."""
    from transformers import TrainerCallback

    class Callback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop.signal_name:
                control.should_save = True
                control.should_training_stop = True
            return control

    return Callback()


def checkpoint_done_callback(run_dir: Path, keep: int, processes: Processes):
    """A TrainerCallback that, once the trainer has saved checkpoint-N (on_save comes after the whole save,
    and after every process wrote its part), writes CHECKPOINT_DONE into it, then keeps the newest `keep`
    complete checkpoints (lib.llm.stages.prune_checkpoints)."""
    from transformers import TrainerCallback

    class Callback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            processes.barrier()  # a sharded save (FSDP / DeepSpeed): every rank has written its shard
            if processes.is_main:
                checkpoint = run_dir / "checkpoints" / f"checkpoint-{state.global_step}"
                write_json_atomic(
                    checkpoint / CHECKPOINT_DONE, {"step": state.global_step, "saved_at": now()}
                )
                prune_checkpoints(run_dir, keep)
            return control

    return Callback()


def watch_records(cfg: dict) -> list[dict]:
    """The held-out problems the control-metrics callback answers: the first eval.watch_problems of the
    dataset's eval split, picked as main_eval.py --num-samples picks them (round-robin over systems)."""
    data = cfg["data"]
    path = repo_path(data["datasets_dir"]) / data["dataset_name"]
    return load_records(path, "eval", data["system"], cfg["eval"]["watch_problems"], round_robin=True)[0]


def watch_answerer(model, tokenizer, records: list[dict], cfg: dict) -> Callable[[list], list[str]]:
    """prompts -> answers as the evaluation decodes them (eval.decoding: `token`, greedy, or
    `expected_value`, each control's expected value), so the watch curve shows what the final evaluation
    will; always at temperature 0, as the watch curve has always been."""
    from lib.llm.generation import expected_value_answerer, generate_completions

    size, tokens = cfg["eval"]["batch_size"], cfg["eval"]["max_new_tokens"]
    if cfg["eval"]["decoding"] == "expected_value":
        return expected_value_answerer(model, tokenizer, records, tokens, size)
    return lambda prompts: generate_completions(model, tokenizer, prompts, tokens, size, 0.0, cfg["seed"])


def control_metrics(model, tokenizer, records: list[dict], cfg: dict) -> dict[str, float]:
    """Answers to `records` (`watch_answerer`), scored by simulation exactly as main_eval.py scores them
    (answer_records -> score_samples -> summarize); the finite ones of parsed, feasible, median_gap, mean_S,
    median_S, success@10%, keyed control/<name>."""
    from lib.llm.evaluation import answer_records, score_samples, summarize

    answer = watch_answerer(model, tokenizer, records, cfg)
    padding_side = tokenizer.padding_side  # generation pads on the left; training keeps its own side
    try:
        rows = answer_records(records, answer)
    finally:
        tokenizer.padding_side = padding_side
    summary = summarize(score_samples(records, rows), cfg["seed"])["all"]
    values = {
        "parsed": summary["parsed"]["rate"],
        "feasible": summary["feasible"]["rate"],
        "median_gap": summary["gap_feasible"]["median"],
        "mean_S": summary["score_parsed"]["mean"],
        "median_S": summary["score_parsed"]["median"],
        "success@10%": summary["success@10%"]["rate"],
    }
    # a number that does not exist (no answer parsed) or is infinite is left out, not logged as 0
    return {f"control/{k}": float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def baseline_metrics(cfg: dict, records: list[dict]) -> dict[str, float]:
    """Each baseline's median gap and success@10% on the watch problems (fitted on the dataset's train split,
    cached: lib/control/baselines.py), keyed control/baseline/<name>/<metric>: the bar the curves draw."""
    from lib.control.baselines import BASELINES, dataset_baselines
    from lib.control.dataset_format import read_info
    from lib.llm.evaluation import summarize
    from lib.llm.verdict import baseline_rows

    path = repo_path(cfg["data"]["datasets_dir"]) / cfg["data"]["dataset_name"]
    fitted = dataset_baselines(path, read_info(path), [r["system"] for r in records])
    values = {}
    for name in BASELINES:
        if all(name in model.missing for model in fitted.values()):
            continue
        summary = summarize(baseline_rows(records, fitted, name), cfg["seed"])["all"]
        for metric, value in (("median_gap", summary["gap_feasible"]["median"]),
                              ("success@10%", summary["success@10%"]["rate"])):  # fmt: skip
            if value is not None and math.isfinite(value):
                values[f"control/baseline/{name}/{metric}"] = float(value)
    return values


def control_metrics_callback(cfg: dict, stage: str, tokenizer):
    """A TrainerCallback that answers the watch problems before the first step, every eval.every_steps
    steps (eval.stage_every_steps[stage] where set) and after the last (with the baselines' numbers on the
    same problems once, at the first), and logs control_metrics like any trainer log: into log_history (so
    log_history.json and the training-curves figure), the console and run.report_to. Set its `trainer`
    attribute after building the trainer. None when the stage's cadence is 0.

    Runs on the main process only; it is skipped (with a warning) when the model is sharded (FSDP or
    DeepSpeed), where one process cannot generate alone.
    """
    from transformers import TrainerCallback

    every = cfg["eval"]["stage_every_steps"][stage]
    every = cfg["eval"]["every_steps"] if every is None else every
    if not every:
        return None
    records = watch_records(cfg)

    class ControlMetrics(TrainerCallback):
        trainer = None
        last_step = -1

        def _measure(self, args, state, model) -> None:
            if not state.is_world_process_zero or state.global_step == self.last_step:
                return
            if args.fsdp or args.deepspeed:
                if self.last_step == -1:
                    log.warning(
                        "control metrics during training are off: the model is sharded (FSDP/DeepSpeed)"
                    )
                self.last_step = state.global_step
                return
            self.last_step = state.global_step
            started = time.perf_counter()
            was_training = model.training
            metrics = control_metrics(model, tokenizer, records, cfg)
            model.train(was_training)
            if not any(key.startswith("control/baseline/") for entry in state.log_history for key in entry):
                metrics |= baseline_metrics(cfg, records)  # the baselines' bar, once (a resumed run has it)
            metrics["control/seconds"] = round(time.perf_counter() - started, 2)
            # what Trainer.log does, without a subclass's log(), which would fold its own step metrics in;
            # the handler's on_log clears should_log, which would drop this step's own loss log: keep it
            state.log_history.append({**metrics, "step": state.global_step})
            control = self.trainer.control
            should_log = control.should_log
            self.trainer.callback_handler.on_log(args, state, control, metrics)
            control.should_log = should_log

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 0:
                self._measure(args, state, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0:
                self._measure(args, state, model)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self._measure(args, state, model)

    return ControlMetrics()


def stage_callbacks(
    cfg: dict, stage: str, tokenizer, run_dir: Path, stop: StopOnSignal, processes: Processes
) -> list:
    """Every callback a stage's trainer gets: the signal stop, the checkpoint marker, TensorBoard
    (run.report_to) and the control metrics (eval.every_steps); pass the trainer to `attach_trainer` once it
    is built."""
    watch = control_metrics_callback(cfg, stage, tokenizer)
    done = checkpoint_done_callback(run_dir, cfg[stage]["save_total_limit"], processes)
    return [stop_callback(stop), done, *report_callbacks(cfg, run_dir), *([watch] if watch else [])]


def attach_trainer(trainer, callbacks: list) -> None:
    """The control-metrics callback logs through the trainer's callback handler, so it needs the trainer."""
    for callback in callbacks:
        if hasattr(callback, "trainer"):
            callback.trainer = trainer


def report_callbacks(cfg: dict, run_dir: Path) -> list:
    """With run.report_to tensorboard: a TensorBoard callback writing to <run>/tensorboard/ (transformers'
    own would write under checkpoints/runs/<time_host>/)."""
    if cfg["run"]["report_to"] != "tensorboard":
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(SummaryWriter(log_dir=str(run_dir / "tensorboard")))]
