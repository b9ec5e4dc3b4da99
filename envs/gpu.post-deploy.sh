#!/usr/bin/env bash
# Snakemake runs this once, inside the new conda environment, after creating it (the environment's
# post-deploy script; `--software-deployment-method conda`). It installs the hpa_batch package of the
# checkout that runs the workflow, editable, so the environment always runs that checkout's code.
# Snakemake runs it from a copy under .snakemake/conda/ and from the working directory, so it takes no
# path of its own: the Snakefile exports HPA_BATCH_SOURCE (its own folder) before environments are made.
set -euo pipefail
: "${HPA_BATCH_SOURCE:?HPA_BATCH_SOURCE is not set: the Snakefile exports it (the checkout to install)}"
python -m pip install --no-deps --editable "$HPA_BATCH_SOURCE"
