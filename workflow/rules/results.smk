# Stage 4: merged result tables (submission, evaluation and report come with the results issue).


rule tables:
    input:
        unpack(merge_inputs),
    output:
        cells=f"{RESULTS}/tables/cells.parquet",
        images=f"{RESULTS}/tables/images.parquet",
    log:
        f"{LOGS}/tables.log",
    params:
        cfg=stage_config(*config.keys()),
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../../envs/cpu.yaml"
    shell:
        "hpa-batch merge --config-json {params.cfg} --cells {output.cells} --images {output.images} > {log} 2>&1"


rule submission:
    input:
        predictions=lambda wildcards: merge_inputs(wildcards)["cell_predictions"],
        segmented=shard_files(f"{RESULTS}/zarr/{{shard}}.segment.json"),
    output:
        f"{RESULTS}/submission.csv",
    log:
        f"{LOGS}/submission.log",
    params:
        stores=shard_files(f"{RESULTS}/zarr/{{shard}}.zarr"),
        n_classes=lambda wildcards: 19 if config["labels"]["catalog"] == "hpa2021" else 28,
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    conda:
        "../../envs/cpu.yaml"
    shell:
        "hpa-batch submit --predictions {input.predictions} --stores {params.stores}"
        " --n-classes {params.n_classes} --out {output} > {log} 2>&1"


rule evaluate:
    input:
        cells=rules.tables.output.cells,
        images=rules.tables.output.images,
    output:
        f"{RESULTS}/metrics.json",
    log:
        f"{LOGS}/evaluate.log",
    params:
        cfg=stage_config(*config.keys()),
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    conda:
        "../../envs/cpu.yaml"
    shell:
        "hpa-batch evaluate --config-json {params.cfg} --cells {input.cells} --images {input.images}"
        " --out {output} > {log} 2>&1"
