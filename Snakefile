# hpa_batch workflow: HPA immunofluorescence images -> OME-Zarr -> ... (see docs/ARCHITECTURE.md).
# Local:   snakemake --cores all
# Cluster: snakemake --profile slurm        (see README.md, "Running on a SLURM cluster")
from snakemake.utils import min_version, validate

from hpa_batch.config import check_config

min_version("9.0")


configfile: "config/config.yaml"


# a config error in one line per problem, naming the file (Snakemake's validate would dump the schema)
check_config(config, workflow.overwrite_configfiles or ["config/config.yaml"])
validate(config, "workflow/schemas/config.schema.yaml")


# `snakemake --report report.html` (or .zip): the outputs marked report() with their captions.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# One driver per working directory, refused before the DAG is built (hpa_batch.core.driver).
acquire_driver_lock()
# Damaged outputs (parquet footers, JSON, checkpoints, tile stamps) are refused before any job runs.
refuse_damaged_outputs()


include: "workflow/rules/convert.smk"
include: "workflow/rules/cells.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/results.smk"


rule all:
    default_target: True
    input:
        rules.convert.input,
        rules.measure.input,
        rules.tiles.input,
        rules.predict.input,
        rules.embed.input,
        rules.merge.output,
        rules.h5ad.output,
        rules.spatialdata.input,
        rules.submit.output,
        rules.evaluate.output,
        rules.report.output,


onsuccess:
    print_qc_summary()


onerror:
    print_resume_hints()
