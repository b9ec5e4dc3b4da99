# Stage 4: merged result tables, Kaggle submission, the scikit-learn baseline, evaluation, the HTML report.


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
        cells=rules.tables.output.cells,
        images=rules.tables.output.images,
        segmented=shard_files(f"{RESULTS}/zarr/{{shard}}.segment.json"),
    output:
        f"{RESULTS}/submission.csv",
    log:
        f"{LOGS}/submission.log",
    params:
        source=lambda wildcards, input: submission_source(input),
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    conda:
        "../../envs/cpu.yaml"
    shell:
        "hpa-batch submit {params.source} --out {output} > {log} 2>&1"


rule baseline:
    input:
        unpack(baseline_inputs),
    output:
        cells=f"{RESULTS}/baseline/cells.parquet",
        summary=f"{RESULTS}/baseline/summary.json",
        model=f"{RESULTS}/baseline/model.joblib",
    log:
        f"{LOGS}/baseline.log",
    params:
        cfg=stage_config(*config.keys()),
    threads: lambda wildcards: config["baseline"]["n_jobs"]
    resources:
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    conda:
        "../../envs/cpu.yaml"
    shell:
        "hpa-batch baseline --config-json {params.cfg} --cells {input.cells} --images {input.images}"
        " --threads {threads} --out {output.cells} > {log} 2>&1"


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        f"{RESULTS}/metrics.json",
    log:
        f"{LOGS}/evaluate.log",
    params:
        cfg=stage_config(*config.keys()),
        baseline=lambda wildcards, input: f"--baseline {input.baseline}" if "baseline" in input.keys() else "",
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    conda:
        "../../envs/cpu.yaml"
    shell:
        "hpa-batch evaluate --config-json {params.cfg} --cells {input.cells} --images {input.images}"
        " {params.baseline} --out {output} > {log} 2>&1"


rule report:
    input:
        unpack(report_inputs),
    output:
        f"{RESULTS}/report.html",
    log:
        f"{LOGS}/report.log",
    params:
        cfg=stage_config(*config.keys()),
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../../envs/cpu.yaml"
    shell:
        "hpa-batch report --config-json {params.cfg} --out {output} > {log} 2>&1"
