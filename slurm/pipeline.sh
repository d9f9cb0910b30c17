#!/usr/bin/env bash
# The whole pipeline as SLURM steps: data -> sft -> eval_sft -> grpo -> eval_grpo -> report.
#
#   sbatch slurm/pipeline.sh                                   # CONFIG below, one GPU
#   sbatch --export=ALL,CONFIG=configs/qwen2.5-1.5b/cuda.yaml slurm/pipeline.sh
#   CONFIG=configs/smollm2/demo_cpu.yaml bash slurm/pipeline.sh   # the same, without SLURM
#   sbatch --export=ALL,RUN_DIR=results/pipeline_X slurm/pipeline.sh # resume a pipeline folder
#
# Cluster specifics (partition, account, modules, environment) live in slurm/site.sh (or the file that
# $PIPELINE_SITE names), sourced below; its defaults work on a plain node with the repository's .venv.
# Each phase is one `srun` step (run directly when not under SLURM) with a banner: its name and start time,
# then its exit status and elapsed time; the first failed phase stops the job with that phase's exit status.
# --requeue: after a preemption or node failure SLURM restarts the job, which finds its pipeline folder by
# job id and resumes at the unfinished phase (training resumes from its last checkpoint). SIGTERM arrives
# 120 s before the time limit (--signal), so training saves a checkpoint and the job can be requeued.
#
#SBATCH --job-name=control-llm-pipeline
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --gres=gpu:1
#SBATCH --mem=64G
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --output=results/slurm-%x-%j.out

set -uo pipefail  # not -e: each phase's status is read and reported by hand below

if [ -n "${SLURM_JOB_ID:-}" ]; then
    cd "${SLURM_SUBMIT_DIR:?}" || exit 2
else
    cd "$(dirname "$0")/.." || exit 2
fi
SITE="${PIPELINE_SITE:-slurm/site.sh}"
# shellcheck source=site.sh
source "$SITE" || { echo "cannot source the site file $SITE" >&2; exit 2; }

CONFIG="${CONFIG:-$PIPELINE_DEFAULT_CONFIG}"
# A task of a sweep (slurm/sweep.sh): its overrides are line TASK_ID + 1 of SWEEP_FILE.
if [ -n "${SWEEP_FILE:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    line=$(grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$SWEEP_FILE" | sed -n "$((SLURM_ARRAY_TASK_ID + 1))p")
    [ -n "$line" ] || { echo "sweep: no line $((SLURM_ARRAY_TASK_ID + 1)) in $SWEEP_FILE" >&2; exit 2; }
    PIPELINE_OVERRIDES="$PIPELINE_OVERRIDES $line"
    echo "sweep task $SLURM_ARRAY_TASK_ID: $line"
fi
STEP=()
[ -n "${SLURM_JOB_ID:-}" ] && STEP=(srun --ntasks=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}")

echo "pipeline: config $CONFIG, python $PYTHON, job ${SLURM_JOB_ID:-none} on $(hostname), started $(date '+%Y-%m-%d %H:%M:%S')"
# RUN_DIR set: resume that pipeline folder. Otherwise find this job's folder (a requeued job resumes it) or
# create one; a bad config stops here.
if [ -z "${RUN_DIR:-}" ]; then
    RUN_DIR=$("$PYTHON" scripts/run_pipeline.py --config "$CONFIG" --init ${SLURM_JOB_ID:+--job-id "$SLURM_JOB_ID"} $PIPELINE_OVERRIDES)
    status=$?
    if [ $status -ne 0 ]; then
        echo "pipeline: could not create the pipeline folder (exit $status)"
        exit $status
    fi
fi
mapfile -t PHASES < <("$PYTHON" scripts/run_pipeline.py --run-dir "$RUN_DIR" --list-phases)
echo "pipeline folder: $RUN_DIR; phases: ${PHASES[*]}"

total_start=$SECONDS
number=0
for phase in "${PHASES[@]}"; do
    number=$((number + 1))
    echo "============================================================"
    echo "PHASE $number/${#PHASES[@]}: $phase"
    echo "Started at: $(date '+%Y-%m-%d %H:%M:%S')"
    echo "============================================================"
    phase_start=$SECONDS
    launcher=""
    case "$phase" in sft|grpo) launcher="$TRAIN_LAUNCHER" ;; esac
    TRAIN_LAUNCHER="$launcher" "${STEP[@]}" "$PYTHON" scripts/run_pipeline.py --run-dir "$RUN_DIR" --phase "$phase"
    status=$?  # the step's own status: read right after it, before any echo
    elapsed=$((SECONDS - phase_start))
    if [ $status -ne 0 ]; then
        echo "FAILED: phase $phase exited with status $status after ${elapsed} s"
        echo "Total runtime: $((SECONDS - total_start)) s; resume with: sbatch slurm/pipeline.sh (same CONFIG) or"
        echo "  $PYTHON scripts/run_pipeline.py --run-dir $RUN_DIR"
        exit $status
    fi
    echo "OK: phase $phase completed in ${elapsed} s"
done
echo "Pipeline completed at $(date '+%Y-%m-%d %H:%M:%S'); total runtime: $((SECONDS - total_start)) s"
echo "report: $RUN_DIR/report.md"
