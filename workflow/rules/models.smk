# Stage 3: folds, training (one job per model and fold; GPU on a cluster), inference per shard.


rule split:
    input:
        unpack(split_inputs),
    output:
        results_file("splits"),
    log:
        log_file("split"),
    conda:
        "../../envs/cpu.yaml"
    params:
        cfg=stage_config("splits", "labels", "segmentation_qc", *SPLIT_GROUP_KEYS),
        metadata=lambda wildcards, input: ["--metadata", input.metadata] if "metadata" in input.keys() else [],
    shell:
        "hpa-batch split --config-json {params.cfg:q} --manifests {input.manifests:q}"
        " --rejected {input.rejected:q} --segment-qc {input.segment_qc:q} {params.metadata:q}"
        " --out {output:q} > {log:q} 2>&1"


# The job log shows the last attempt (Snakemake deletes a failed job's log before a retry); every
# attempt, each stop and resume included, is kept in the fold's state/train.log.
rule train_model:
    input:
        splits=rules.split.output[0],
        data=lambda wildcards: shard_files(model_input(wildcards.model)),
    output:
        model=fold_file(layout.MODEL_FILE),
        history=report(
            fold_file(layout.HISTORY_FILE),
            caption="../report/history.rst",
            category="Training",
            labels={"model": "{model}", "fold": "{fold}"},
        ),
        thresholds=fold_file(layout.THRESHOLDS_FILE),
    log:
        log_file("train"),
    conda:
        "../../envs/gpu.yaml"
    threads: 4
    resources:
        gpu=lambda wildcards: model_spec(wildcards.model).gpus,
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards, attempt: 720 * attempt,
    params:
        cfg=lambda wildcards: model_config(wildcards.model),
        launcher=lambda wildcards: train_launcher(wildcards.model),
        out=lambda wildcards: results_file("fold_dir", model=wildcards.model, fold=wildcards.fold),
        reads=lambda wildcards: input_option(wildcards.model),
    shell:
        "{params.launcher} train --config-json {params.cfg:q} --model {wildcards.model:q}"
        " --fold {wildcards.fold:q} --splits {input.splits:q} {params.reads:q} {input.data:q} --out {params.out:q}"
        " > {log:q} 2>&1"


rule predict_shard:
    input:
        data=lambda wildcards: model_input(wildcards.model, shard=wildcards.shard),
        models=lambda wildcards: fold_models(wildcards.model),
    output:
        results_file("predictions"),
    log:
        log_file("predict"),
    conda:
        "../../envs/gpu.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        cfg=lambda wildcards: model_config(wildcards.model),
        reads=lambda wildcards: input_option(wildcards.model),
    shell:
        "hpa-batch predict --config-json {params.cfg:q} --model {wildcards.model:q} --shard {wildcards.shard:q}"
        " --models {input.models:q} {params.reads:q} {input.data:q} --out {output:q} > {log:q} 2>&1"


rule embed_shard:
    input:
        unpack(embed_inputs),
    output:
        directory(results_file("embeddings")),
    log:
        log_file("embed"),
    conda:
        "../../envs/gpu.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=shard_runtime(seconds_per_image=2),
    params:
        cfg=lambda wildcards: encoder_config(wildcards.encoder),
        image=image_crop_args,
    shell:
        "hpa-batch embed --config-json {params.cfg:q} --encoder {wildcards.encoder:q} --shard {wildcards.shard:q}"
        " --tiles {input.tiles:q} {params.image:q} --out {output:q} > {log:q} 2>&1"


rule train:
    input:
        METADATA,
        trained_models(),


rule predict:
    input:
        METADATA,
        [results_file("predictions", model=spec.name, shard=shard) for spec in CFG.models for shard in SHARDS],


rule embed:
    input:
        METADATA,
        [results_file("embeddings", encoder=e.name, shard=shard) for e in CFG.encoders for shard in SHARDS],
