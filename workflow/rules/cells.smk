# Stage 2: segmentation (labels into each image's OME-Zarr), per-cell table, packed cell tiles.


rule segment_shard:
    input:
        converted=rules.convert_shard.output.summary,
    output:
        summary=results_file("segment_summary"),
        qc=report(
            results_file("segment_qc"),
            caption="../report/segment_qc.rst",
            category="Quality control",
            subcategory="Segmentation",
            labels={"shard": "{shard}"},
        ),
    log:
        log_file("segment"),
    conda:
        "../../envs/cpu.yaml"
    threads: 4
    resources:
        mem_mb=lambda wildcards, threads, attempt: (1000 + 600 * threads) * attempt,
        runtime=shard_runtime(seconds_per_image=3),
    params:
        store=lambda wildcards: results_file("store", shard=wildcards.shard),
        cfg=stage_config("segmentation", "segmentation_qc", "conversion"),
    shell:
        "hpa-batch segment --shard {wildcards.shard:q} --config-json {params.cfg:q}"
        " --store {params.store:q} --qc {output.qc:q} --summary {output.summary:q}"
        " --threads {threads} > {log:q} 2>&1"


rule measure_shard:
    input:
        segmented=rules.segment_shard.output.summary,
        segment_qc=rules.segment_shard.output.qc,
        manifest=rules.manifest.output.manifest,
    output:
        results_file("cells"),
    log:
        log_file("measure"),
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=shard_runtime(seconds_per_image=5),
    params:
        store=lambda wildcards: results_file("store", shard=wildcards.shard),
        cfg=stage_config("measure", "segmentation_qc"),
    shell:
        "hpa-batch measure --shard {wildcards.shard:q} --config-json {params.cfg:q}"
        " --store {params.store:q} --manifest {input.manifest:q} --segment-qc {input.segment_qc:q}"
        " --out {output:q} > {log:q} 2>&1"


rule tiles_shard:
    input:
        cells=rules.measure_shard.output[0],
    output:
        directory(results_file("tiles")),
    log:
        log_file("tiles"),
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=shard_runtime(seconds_per_image=4),
    params:
        store=lambda wildcards: results_file("store", shard=wildcards.shard),
        cfg=stage_config("tiles", "measure"),
    shell:
        "hpa-batch tiles --shard {wildcards.shard:q} --config-json {params.cfg:q}"
        " --store {params.store:q} --cells {input.cells:q} --out {output:q} > {log:q} 2>&1"


rule segment:
    input:
        METADATA,
        shard_files(results_file("segment_summary")),


rule measure:
    input:
        METADATA,
        shard_files(results_file("cells")),


rule tiles:
    input:
        METADATA,
        shard_files(results_file("tiles")),
