# Stage 1: admit images (manifest) and convert each shard to OME-Zarr.


rule manifest:
    output:
        manifest=f"{RESULTS}/manifest/{{shard}}.parquet",
        rejected=f"{RESULTS}/qc/{{shard}}.manifest.tsv",
    log:
        f"{LOGS}/manifest/{{shard}}.log",
    params:
        digest=shard_digest,
        cfg=stage_config("dataset", "labels", "qc", "shard_size"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        "../../envs/cpu.yaml"
    shell:
        "hpa-batch manifest --shard {wildcards.shard} --config-json {params.cfg}"
        " --expect-digest {params.digest} --out {output.manifest} --rejected {output.rejected}"
        " > {log} 2>&1"


rule convert_shard:
    input:
        manifest=rules.manifest.output.manifest,
        rejected=rules.manifest.output.rejected,
    output:
        summary=f"{RESULTS}/zarr/{{shard}}.convert.json",
        rejected=f"{RESULTS}/qc/{{shard}}.rejected.tsv",
    log:
        f"{LOGS}/convert/{{shard}}.log",
    params:
        store=lambda wildcards: f"{RESULTS}/zarr/{wildcards.shard}.zarr",
        cfg=stage_config("conversion"),
    threads: 4
    resources:
        # Images in flight = threads; ~350 MB each at 3072 px (decode + pyramid + encode buffers).
        mem_mb=lambda wildcards, threads, attempt: (800 + 400 * threads) * attempt,
        runtime=shard_runtime(seconds_per_image=3),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "hpa-batch convert --shard {wildcards.shard} --config-json {params.cfg}"
        " --manifest {input.manifest} --manifest-rejected {input.rejected}"
        " --store {params.store} --rejected {output.rejected} --summary {output.summary}"
        " --threads {threads} > {log} 2>&1"


rule qc:
    input:
        shard_files(f"{RESULTS}/qc/{{shard}}.rejected.tsv"),
    output:
        table=f"{RESULTS}/qc/rejected.tsv",
        summary=f"{RESULTS}/qc/summary.txt",
    log:
        f"{LOGS}/qc.log",
    conda:
        "../../envs/cpu.yaml"
    shell:
        "hpa-batch qc {input} --out {output.table} > {output.summary} 2> {log}"


rule convert:
    input:
        METADATA,
        shard_files(f"{RESULTS}/zarr/{{shard}}.convert.json"),
        rules.qc.output.table,
