# Stage 1: admit images (manifest) and convert each shard to OME-Zarr.


rule manifest:
    output:
        manifest=results_file("manifest"),
        rejected=results_file("manifest_rejected"),
    log:
        log_file("manifest"),
    conda:
        "../../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    params:
        digest=shard_digest,
        cfg=stage_config("dataset", "labels", "qc", "shard_size"),
    shell:
        "hpa-batch manifest --shard {wildcards.shard:q} --config-json {params.cfg:q}"
        " --expect-digest {params.digest:q} --out {output.manifest:q} --rejected {output.rejected:q}"
        " > {log:q} 2>&1"


rule convert_shard:
    input:
        manifest=rules.manifest.output.manifest,
        rejected=rules.manifest.output.rejected,
    output:
        summary=results_file("convert_summary"),
        rejected=results_file("rejected"),
    log:
        log_file("convert"),
    conda:
        "../../envs/cpu.yaml"
    threads: 4
    resources:
        # Images in flight = threads; ~350 MB each at 3072 px (decode + pyramid + encode buffers).
        mem_mb=lambda wildcards, threads, attempt: (800 + 400 * threads) * attempt,
        runtime=shard_runtime(seconds_per_image=3),
    params:
        store=lambda wildcards: results_file("store", shard=wildcards.shard),
        cfg=stage_config("conversion"),
    shell:
        "hpa-batch convert --shard {wildcards.shard:q} --config-json {params.cfg:q}"
        " --manifest {input.manifest:q} --manifest-rejected {input.rejected:q}"
        " --store {params.store:q} --rejected {output.rejected:q} --summary {output.summary:q}"
        " --threads {threads} > {log:q} 2>&1"


rule qc:
    input:
        shard_files(results_file("rejected")),
    output:
        table=report(
            results_file("qc_table"),
            caption="../report/qc_table.rst",
            category="Quality control",
            labels={"table": "refused images"},
        ),
        summary=results_file("qc_summary"),
    log:
        log_file("qc"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "hpa-batch qc {input:q} --out {output.table:q} > {output.summary:q} 2> {log:q}"


rule convert:
    input:
        METADATA,
        shard_files(results_file("convert_summary")),
        rules.qc.output.table,
