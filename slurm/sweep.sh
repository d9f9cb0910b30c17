#!/usr/bin/env bash
# Submit a sweep: one SLURM array task per line of OVERRIDES_FILE, each a whole pipeline (slurm/pipeline.sh)
# with that line's key=value overrides on top of CONFIG. Blank lines and lines starting with # are skipped.
#
#   bash slurm/sweep.sh sweeps/lr.txt                      # CONFIG from slurm/site.sh
#   CONFIG=configs/qwen2.5-1.5b/cuda.yaml bash slurm/sweep.sh sweeps/lr.txt --partition=gpu
#
# where sweeps/lr.txt holds, for example:
#   sft.learning_rate=5e-5 seed=1
#   sft.learning_rate=1e-4 seed=1
# Extra arguments go to sbatch (partition, account, --array throttling such as %2 is added with SWEEP_MAX).
# Each task makes its own results/pipeline_<timestamp>/ and, being requeueable, resumes it after preemption.
set -euo pipefail
cd "$(dirname "$0")/.."
file="${1:?usage: bash slurm/sweep.sh OVERRIDES_FILE [sbatch args...]}"
shift
[ -f "$file" ] || { echo "sweep: no file $file" >&2; exit 2; }
count=$(grep -c -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$file" || true)
[ "$count" -gt 0 ] || { echo "sweep: $file has no override lines" >&2; exit 2; }
array="0-$((count - 1))${SWEEP_MAX:+%$SWEEP_MAX}"
exports="ALL,SWEEP_FILE=$(realpath "$file")${CONFIG:+,CONFIG=$CONFIG}"
echo "sweep: $count pipelines from $file (array $array)" >&2
sbatch --parsable --array="$array" --export="$exports" "$@" slurm/pipeline.sh
