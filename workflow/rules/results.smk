# Stage 4: merged result tables, Kaggle submission, the scikit-learn baseline, evaluation, the HTML report.
# Each rule hands its command the inputs it declares, and as params only the config keys its stage reads.


rule merge:
    input:
        unpack(merge_inputs),
    output:
        cells=results_file("cells_table"),
        images=results_file("images_table"),
        truth_pairs=results_file("truth_pairs"),
    log:
        log_file("merge"),
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        cfg=stage_config("merge", "labels", "evaluation.truth_dir"),
        stores=STORES,
        cell_predictions=lambda wildcards, input: given(input, "cell_predictions"),
        image_predictions=lambda wildcards, input: given(input, "image_predictions"),
        cell_thresholds=lambda wildcards, input: given(input, "cell_thresholds"),
        image_thresholds=lambda wildcards, input: given(input, "image_thresholds"),
    shell:
        "hpa-batch merge --config-json {params.cfg:q} --splits {input.splits:q} --manifests {input.manifests:q}"
        " --rejected {input.rejected:q} --segment-qc {input.segment_qc:q} --shard-cells {input.cells:q}"
        " --cell-predictions {params.cell_predictions:q} --image-predictions {params.image_predictions:q}"
        " --cell-thresholds {params.cell_thresholds:q} --image-thresholds {params.image_thresholds:q}"
        " --stores {params.stores:q} --cells {output.cells:q} --images {output.images:q}"
        " --truth-pairs {output.truth_pairs:q} > {log:q} 2>&1"


rule h5ad:
    input:
        unpack(h5ad_inputs),
    output:
        results_file("cells_h5ad"),
    log:
        log_file("h5ad"),
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        cfg=stage_config("labels", "h5ad"),
        embeddings=lambda wildcards, input: (
            ["--embeddings", *input.embeddings, "--embedding-key", EMBEDDING_KEY]
            if "embeddings" in input.keys()
            else []
        ),
    shell:
        "hpa-batch h5ad --config-json {params.cfg:q} --cells {input.cells:q} {params.embeddings:q}"
        " --encoder-stores {input.encoders:q} --out {output:q} > {log:q} 2>&1"


rule spatialdata_shard:
    input:
        unpack(spatialdata_inputs),
    output:
        tracked_file("spatialdata"),
    log:
        log_file("spatialdata"),
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        store=lambda wildcards: results_file("store", shard=wildcards.shard),
        out=lambda wildcards: results_file("spatialdata", shard=wildcards.shard),
        cfg=stage_config("labels"),
        embeddings=lambda wildcards, input: (
            ["--embeddings", input.embeddings, "--embedding-key", EMBEDDING_KEY]
            if "embeddings" in input.keys()
            else []
        ),
    shell:
        "hpa-batch spatialdata --shard {wildcards.shard:q} --config-json {params.cfg:q}"
        " --store {params.store:q} --cells {input.cells:q} --h5ad {input.h5ad:q} {params.embeddings:q}"
        " --encoder-stores {input.encoders:q} --out {params.out:q} > {log:q} 2>&1"


rule spatialdata:
    input:
        METADATA,
        shard_files(tracked_file("spatialdata")),


rule submit:
    input:
        cells=rules.merge.output.cells,
        images=rules.merge.output.images,
        segmented=shard_files(results_file("segment_summary")),
    output:
        report(results_file("submission"), caption="../report/submission.rst", category="Submission"),
    log:
        log_file("submit"),
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    params:
        source=lambda wildcards, input: submission_source(input),
    shell:
        "hpa-batch submit {params.source:q} --out {output:q} > {log:q} 2>&1"


rule baseline:
    input:
        unpack(baseline_inputs),
    output:
        cells=results_file("baseline_cells"),
        summary=results_file("baseline_summary"),
        model=results_file("baseline_model"),
    log:
        log_file("baseline"),
    conda:
        "../../envs/cpu.yaml"
    threads: lambda wildcards: CFG.baseline.n_jobs
    resources:
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
    params:
        cfg=stage_config("baseline", "labels"),
        held_out=HELD_OUT,
        predictions=lambda wildcards, input: given(input, "predictions"),
    shell:
        "hpa-batch baseline --config-json {params.cfg:q} --cells {input.cells:q} --images {input.images:q}"
        " --predictions {params.predictions:q} {params.held_out:q} --threads {threads} --out {output.cells:q}"
        " --summary {output.summary:q} --model-out {output.model:q}"
        " > {log:q} 2>&1"


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        report(results_file("metrics"), caption="../report/metrics.rst", category="Metrics"),
    log:
        log_file("evaluate"),
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    params:
        cfg=stage_config("evaluation", "labels", "dataset.label_column"),
        held_out=HELD_OUT,
        baseline=lambda wildcards, input: (
            ["--baseline", input.baseline, "--baseline-summary", input.baseline_summary]
            if "baseline" in input.keys()
            else []
        ),
    shell:
        "hpa-batch evaluate --config-json {params.cfg:q} --cells {input.cells:q} --images {input.images:q}"
        " {params.baseline:q} {params.held_out:q} --truth-pairs {input.truth_pairs:q} --compare {input.compare:q}"
        " --out {output:q} > {log:q} 2>&1"


rule report:
    input:
        unpack(report_inputs),
    output:
        html=report(results_file("report"), caption="../report/report.rst", category="Report"),
        figures=report(
            directory(results_file("report_figures")),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    log:
        log_file("report"),
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        cfg=stage_config("report", "labels", "dataset.name", "merge.fusion", "merge.cell_weight"),
        # the whole config, for the provenance section (the report, a cheap job, follows every edit)
        run_config=RUN_CONFIG,
        stores=STORES,
        baseline=lambda wildcards, input: given(input, "baseline"),
    shell:
        "hpa-batch report --config-json {params.cfg:q} --cells {input.cells:q} --images {input.images:q}"
        " --metrics {input.metrics:q} --qc {input.qc:q} --baseline {params.baseline:q}"
        " --histories {input.histories:q} --tiles {input.tiles:q} --stores {params.stores:q}"
        " --run-config {params.run_config:q} --h5ad {input.h5ad:q} --out {output.html:q}"
        " --figures {output.figures:q} > {log:q} 2>&1"
