# Site settings for slurm/pipeline.sh and slurm/sweep.sh, sourced by them. Copy this file, edit the copy,
# and point PIPELINE_SITE at it (sbatch --export=ALL,PIPELINE_SITE=slurm/my_site.sh ...), or edit it here.
# Partition, account and QOS go on the sbatch command line or as #SBATCH lines of your own copy of
# pipeline.sh, since SLURM reads #SBATCH lines before this file runs:
#   sbatch --partition=gpu --account=my_lab slurm/pipeline.sh

# Modules your cluster needs before Python runs (uncomment and adapt):
# module load cuda/12.4 python/3.11

# Python with the project's environment (made by `make install`, or `make install-cuda` on GPU nodes).
PYTHON="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then
    echo "site.sh: $PYTHON not found; run 'make install' on a login node first (or set PYTHON)" >&2
    return 2
fi

# The experiment when CONFIG is not given.
PIPELINE_DEFAULT_CONFIG="${PIPELINE_DEFAULT_CONFIG:-configs/qwen2.5-1.5b/cuda.yaml}"

# key=value overrides applied when the pipeline folder is created (e.g. "seed=1 sft.learning_rate=5e-5").
PIPELINE_OVERRIDES="${PIPELINE_OVERRIDES:-}"

# How the training phases start: empty = one process. For several GPUs on the node, e.g.
#   TRAIN_LAUNCHER="accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 4"
TRAIN_LAUNCHER="${TRAIN_LAUNCHER:-}"

# Nodes without internet: use the hub cache only (a lookup would otherwise hang before failing).
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-0}"
# Keep Python's output unbuffered so the job log shows progress as it happens.
export PYTHONUNBUFFERED=1
