# Planning only: which shards exist and what each job is handed. No processing happens here.
# Every value a rule's shell line interpolates is quoted there (``{x:q}``; a list quotes each item), so a
# path with spaces, quotes or ``;`` is one argument; the functions below return plain strings or lists.
import json
import os
from pathlib import Path

from hpa_batch import layout
from hpa_batch.config import config_from_dict, stage_subset
from hpa_batch.convert.plan import check_images_dirs, plan_from_config

# The conda environments' post-deploy scripts (envs/*.post-deploy.sh) install this checkout's package
# (HPA_BATCH_SOURCE may be set beforehand to install another checkout).
os.environ.setdefault("HPA_BATCH_SOURCE", str(Path(workflow.basedir).resolve()))

CFG = config_from_dict(config)
RESULTS = str(CFG.results_dir)
LOGS = str(CFG.logs_dir)
# One CSV read at DAG-build time; a shard's membership depends only on its own cell line. A missing
# table plans no shard and becomes a missing input of the target rules, which Snakemake reports by name.
METADATA = str(CFG.dataset.metadata)
SHARDS = {}
if Path(METADATA).is_file():
    check_images_dirs(CFG)  # refused before any job runs, naming the directory
    SHARDS = {shard.name: shard for shard in plan_from_config(CFG)}


wildcard_constraints:
    shard="[a-z0-9-]+-[0-9]{4}",


def results_file(key, **fields):
    """A path under results_dir (hpa_batch.layout.RESULTS); unfilled fields stay wildcards."""
    return str(layout.result(RESULTS, key, **fields))


def tracked_file(key, **fields):
    """The declared output for ``key``: its path, or the file inside it Snakemake tracks
    (hpa_batch.layout.TRACKED: no .snakemake_timestamp written into the folder)."""
    return str(layout.tracked(RESULTS, key, **fields))


def log_file(key, **fields):
    """A job log under logs_dir (hpa_batch.layout.LOGS); unfilled fields stay wildcards."""
    return str(layout.log(LOGS, key, **fields))


def fold_file(name):
    """``name`` (model.pt, history.csv, thresholds.json) in this run's fold folder, as a pattern."""
    return str(layout.result(RESULTS, "fold_dir") / name)


def shard_digest(wildcards):
    """Hash of the shard's metadata rows: the manifest reruns iff its rows change."""
    return SHARDS[wildcards.shard].digest


def stage_config(*keys):
    """JSON of the config keys a stage reads (a param: reruns iff they change; quoted by ``:q``)."""
    return stage_subset(config, keys)


def submission_source(input):
    """Arguments of the submission step (a list: each is quoted by ``:q``): the 2021 task's cells
    table and the stores' cell masks, or the 2018 task's images table (Id,Predicted per image), chosen
    by the label catalog's task."""
    if CFG.catalog.task == "image":
        return ["--images", input.images]
    return ["--cells", input.cells, "--stores", *STORES, "--catalog", CFG.catalog.name]


def shard_files(pattern):
    """``pattern`` (with ``{shard}``) expanded over every planned shard."""
    return [pattern.format(shard=name) for name in SHARDS]


def refuse_damaged_outputs():
    """Before the DAG is scheduled (main process only): refuse to start over damaged outputs, naming
    each; a consumer failing on one would have its good outputs deleted by Snakemake before it ran."""
    from hpa_batch.integrity import refuse_damaged

    if workflow.is_main_process:
        refuse_damaged(RESULTS)


def here(path):
    """``path`` relative to the working directory when it lies in it (Snakemake makes config files absolute)."""
    import os

    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def acquire_driver_lock():
    """Refuse a second driver in this working directory (see hpa_batch.core.driver).

    Called while the Snakefile is parsed, before the DAG is built; jobs (local subprocesses, SLURM
    jobs) parse the Snakefile too but are not main processes and never take the lock. After a driver
    that died, the results' output locks tell whether its jobs still run (refused) or not (its stale
    Snakemake locks are removed). The results tree is locked too (a second driver in another
    working directory on the same results_dir is refused) and marked as a results tree.
    """
    import sys

    from hpa_batch.core.driver import guard, ignore_job_signals
    from hpa_batch.core.tree import mark_tree

    if workflow.is_main_process:
        if guard(".", sys.argv, results=RESULTS) is not None:
            # the tree's marker: repair acts only in marked trees and prints the command with these files
            mark_tree(RESULTS, configfiles=[here(c) for c in workflow.overwrite_configfiles or []])
    else:
        ignore_job_signals()  # a SLURM job: signals are for its command (a training saves and exits 75)


def print_resume_hints():
    """After a failed run: name the trainings a signal stopped (they saved their state) and what to run."""
    from glob import glob

    from hpa_batch.core.driver import stopped_trainings

    for log in stopped_trainings(glob(log_file("train", model="*", fold="*"))):
        print(f"{log}: a signal stopped this training after it saved its state; rerun the same command to resume it")


def print_qc_summary():
    """Show the run's refused images (written by rule qc) at the end of a successful run."""
    summary = Path(results_file("qc_summary"))
    if summary.is_file():
        print(summary.read_text())


wildcard_constraints:
    model="[A-Za-z0-9._-]+",
    fold="[0-9]+",


def model_spec(name):
    """The typed spec of model ``name`` (hpa_batch.spec.ModelSpec)."""
    return CFG.model(name)


def model_config(name):
    """JSON of what training/inference of ``name`` reads (its spec + catalog; quoted by ``:q``)."""
    return json.dumps(
        {"labels": {"catalog": CFG.catalog.name}, "models": [model_spec(name).to_entry()]},
        sort_keys=True,
        separators=(",", ":"),
    )


wildcard_constraints:
    encoder="[A-Za-z0-9._-]+",


def encoder_config(name):
    """JSON of what the embed stage of encoder ``name`` reads: its entry and the tiles' settings (the
    intensity window and margin of image crops; quoted by ``:q``)."""
    return json.dumps(
        {"encoders": [CFG.encoder(name).to_entry()], "tiles": config["tiles"]},
        sort_keys=True,
        separators=(",", ":"),
    )


def embed_inputs(wildcards):
    """The shard's tile store and, for crops cut from the image, its segmented store (its summary)
    and its cells table."""
    inputs = {"tiles": results_file("tiles", shard=wildcards.shard)}
    if CFG.encoder(wildcards.encoder).crop.source == "image":
        inputs["segmented"] = results_file("segment_summary", shard=wildcards.shard)
        inputs["cells"] = results_file("cells", shard=wildcards.shard)
    return inputs


def image_crop_args(wildcards, input):
    """``--store`` and ``--cells`` of an encoder that crops from the image (a list: each is quoted)."""
    if "cells" not in input.keys():
        return []
    return ["--store", results_file("store", shard=wildcards.shard), "--cells", input.cells]


def model_input(name, **fields):
    """What model ``name`` reads per shard (a pattern over ``{shard}`` unless given): its tile store, or
    for a head on an encoder's embeddings (``encoder:``) that encoder's embedding store."""
    encoder = model_spec(name).encoder
    if encoder is None:
        return results_file("tiles", **fields)
    return results_file("embeddings", encoder=encoder, **fields)


def input_option(name):
    """The train / predict option naming what model ``name`` reads (one fixed word, quoted by ``:q``)."""
    return "--tiles" if model_spec(name).encoder is None else "--embeddings"


def fold_models(name, file=layout.MODEL_FILE):
    """``file`` of every fold of model ``name``: this run's, or another run's (``trained:``)."""
    return [str(p) for p in layout.fold_files(RESULTS, model_spec(name), file)]


def trained_models():
    """Checkpoints of the models this run trains (models with ``trained:`` are only applied)."""
    return [fold_models(spec.name) for spec in CFG.trained_here()]


def baseline_runs():
    """The baseline trains on labels: on an unlabelled set it is skipped (the report says why)."""
    return CFG.baseline.enabled and CFG.dataset.label_column is not None


def train_launcher(name):
    """``hpa-batch``, or torchrun with one process per GPU when the model asks for several: a command
    prefix (the one unquoted interpolation; it holds only these fixed words and an integer)."""
    gpus = model_spec(name).gpus
    if gpus > 1:
        return f"torchrun --standalone --nproc-per-node={gpus} -m hpa_batch.cli"
    return "hpa-batch"


def shard_runtime(seconds_per_image, base_minutes=10):
    """Walltime (minutes) of a shard job: grows with the shard's image count, doubles per retry.
    Memory does not grow with shard size (images are streamed), so only runtime scales."""

    def runtime(wildcards, attempt):
        n = len(SHARDS[wildcards.shard].ids)
        return (base_minutes + -(-n * seconds_per_image // 60)) * attempt

    return runtime


def merge_inputs(wildcards):
    """Every shard file the merge reads, and the chosen models' predictions and thresholds."""
    files = {
        "splits": results_file("splits"),
        "manifests": shard_files(results_file("manifest")),
        "cells": shard_files(results_file("cells")),
        "rejected": shard_files(results_file("rejected")),
        "segment_qc": shard_files(results_file("segment_qc")),
    }
    for level in ("cell", "image"):
        spec = CFG.merged_model(level)
        if spec:
            files[f"{level}_predictions"] = shard_files(results_file("predictions", model=spec.name))
            files[f"{level}_thresholds"] = fold_models(spec.name, layout.THRESHOLDS_FILE)
    return files


def given(input, key):
    """The files of an optional input as arguments of a list option (none: the option alone = none);
    a list, each file quoted by ``:q``."""
    return list(input[key]) if key in input.keys() else []


# Grouped folds read the metadata table's group column (and the id column) in the split job.
SPLIT_GROUP_KEYS = ["dataset.metadata", "dataset.id_column"] if CFG.splits.group_column else []


def split_inputs(wildcards):
    """Every shard's manifest and QC tables, and the metadata table when folds are grouped by one of its
    columns (its edits then rerun the split)."""
    inputs = {
        "manifests": shard_files(results_file("manifest")),
        "rejected": shard_files(results_file("rejected")),
        "segment_qc": shard_files(results_file("segment_qc")),
    }
    if CFG.splits.group_column:
        inputs["metadata"] = METADATA
    return inputs


EMBEDDED = CFG.merged_model("cell")
EMBEDDED = EMBEDDED if EMBEDDED is not None and EMBEDDED.embeddings else None
# obsm key of the cell model's embeddings in cells.h5ad (with embeddings: true on that model)
EMBEDDING_KEY = f"X_{EMBEDDED.name}" if EMBEDDED else ""


def h5ad_inputs(wildcards):
    """The merged cells table, every encoder's embedding stores and, when the cell model stores
    embeddings, its predictions."""
    inputs = {
        "cells": results_file("cells_table"),
        "encoders": [results_file("embeddings", encoder=e.name, shard=s) for e in CFG.encoders for s in SHARDS],
    }
    if EMBEDDED:
        inputs["embeddings"] = shard_files(results_file("predictions", model=EMBEDDED.name))
    return inputs


def spatialdata_inputs(wildcards):
    """The shard's segmented store (its summary), the merged cells table, cells.h5ad (its X_umap),
    every encoder's store of the shard and, when the cell model stores embeddings, its predictions of
    the shard."""
    inputs = {
        "segmented": results_file("segment_summary", shard=wildcards.shard),
        "cells": results_file("cells_table"),
        "h5ad": results_file("cells_h5ad"),
        "encoders": [results_file("embeddings", encoder=e.name, shard=wildcards.shard) for e in CFG.encoders],
    }
    if EMBEDDED:
        inputs["embeddings"] = results_file("predictions", model=EMBEDDED.name, shard=wildcards.shard)
    return inputs


def baseline_inputs(wildcards):
    """The merged tables, the cell model's predictions when the baseline appends embeddings, and the
    trained baseline's files when baseline.trained applies another run's."""
    inputs = {"cells": results_file("cells_table"), "images": results_file("images_table")}
    if CFG.baseline.trained is not None:
        inputs["trained"] = [str(CFG.baseline.trained / n) for n in ("model.joblib", "summary.json")]
    if CFG.baseline.embeddings:
        inputs["predictions"] = merge_inputs(wildcards)["cell_predictions"]
    return inputs


def evaluate_inputs(wildcards):
    """The merged tables, the truth matches and, when enabled, the baseline's predictions."""
    inputs = {
        "cells": results_file("cells_table"),
        "images": results_file("images_table"),
        "truth_pairs": results_file("truth_pairs"),
        # every cell-level model's predictions when there are two or more: scored side by side
        "compare": [results_file("predictions", model=m.name, shard=s) for m in CFG.compared_models() for s in SHARDS],
    }
    if baseline_runs():
        inputs["baseline"] = results_file("baseline_cells")
        inputs["baseline_summary"] = results_file("baseline_summary")
    return inputs


def report_inputs(wildcards):
    """Everything the report shows: tables, metrics, baseline, training histories, QC, tiles."""
    inputs = {k: v for k, v in evaluate_inputs(wildcards).items() if k not in ("truth_pairs", "compare")}
    inputs["metrics"] = results_file("metrics")
    inputs["histories"] = [
        h
        for spec in CFG.models
        for h in fold_models(spec.name, layout.HISTORY_FILE)
        if not spec.external or Path(h).is_file()
    ]  # another run's, if kept
    inputs["tiles"] = shard_files(results_file("tiles"))
    inputs["qc"] = results_file("qc_table")
    inputs["h5ad"] = results_file("cells_h5ad")
    return inputs


HELD_OUT = layout.held_out_args(CFG)  # which images no model of this run trained on
STORES = shard_files(results_file("store"))
# The whole config, shown in the report's provenance section.
RUN_CONFIG = json.dumps(config, sort_keys=True, separators=(",", ":"))
