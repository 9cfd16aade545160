#!/bin/bash
# π₀-EqM on a Cloud TPU pod slice (e.g. v5p-32: 4 hosts × 4 chips): the same command on every host (--worker=all).
#
#   TPU_NAME=my-v5p-32 ZONE=us-east5-a bash examples/cluster/tpu_pod.sh
#
# No PI0_* or SLURM variables are set on a TPU VM, so scripts/train.py falls through to JAX's own cluster
# auto-detection (jax.distributed.initialize() with no arguments), which finds the slice's hosts from the TPU
# metadata. The checkout, datasets and checkpoint dir must be on every host (e.g. a GCS-fuse or NFS mount).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR=${REPO_DIR:-pi0_eqm}

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  cd $REPO_DIR
  command -v uv >/dev/null || pip install uv
  uv sync --frozen --extra tpu
  uv run --frozen --extra tpu scripts/train.py pi0_eqm_libero --exp-name=tpu_run --fsdp-devices=4 --batch-size=32 --resume
"
