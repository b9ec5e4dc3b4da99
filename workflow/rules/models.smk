# Stage 3: folds, training (one job per model and fold; GPU on a cluster), inference per shard.


rule split:
    input:
        manifests=shard_files(f"{RESULTS}/manifest/{{shard}}.parquet"),
        rejected=shard_files(f"{RESULTS}/qc/{{shard}}.rejected.tsv"),
        segment_qc=shard_files(f"{RESULTS}/qc/{{shard}}.segment.tsv"),
    output:
        f"{RESULTS}/splits.parquet",
    log:
        f"{LOGS}/split.log",
    params:
        cfg=stage_config("splits", "labels", "segmentation_qc"),
    conda:
        "../../envs/cpu.yaml"
    shell:
        "hpa-batch split --config-json {params.cfg} --manifests {input.manifests}"
        " --rejected {input.rejected} --segment-qc {input.segment_qc} --out {output} > {log} 2>&1"


rule train_model:
    input:
        splits=rules.split.output[0],
        tiles=shard_files(f"{RESULTS}/tiles/{{shard}}.zarr"),
    output:
        model=f"{RESULTS}/models/{{model}}/fold{{fold}}/model.pt",
        history=f"{RESULTS}/models/{{model}}/fold{{fold}}/history.csv",
        thresholds=f"{RESULTS}/models/{{model}}/fold{{fold}}/thresholds.json",
    log:
        f"{LOGS}/train/{{model}}-fold{{fold}}.log",
    params:
        cfg=lambda wildcards: model_config(wildcards.model),
        launcher=lambda wildcards: train_launcher(wildcards.model),
        out=lambda wildcards: f"{RESULTS}/models/{wildcards.model}/fold{wildcards.fold}",
    threads: 4
    resources:
        gpu=lambda wildcards: model_spec(wildcards.model)["gpus"],
        mem_mb=lambda wildcards, attempt: 16000 * attempt,
        runtime=lambda wildcards, attempt: 720 * attempt,
    conda:
        "../../envs/gpu.yaml"
    shell:
        "{params.launcher} train --config-json {params.cfg} --model {wildcards.model}"
        " --fold {wildcards.fold} --splits {input.splits} --tiles {input.tiles} --out {params.out}"
        " > {log} 2>&1"


rule predict_shard:
    input:
        tiles=f"{RESULTS}/tiles/{{shard}}.zarr",
        models=lambda wildcards: fold_models(wildcards.model),
    output:
        f"{RESULTS}/predictions/{{model}}/{{shard}}.parquet",
    log:
        f"{LOGS}/predict/{{model}}-{{shard}}.log",
    params:
        cfg=lambda wildcards: model_config(wildcards.model),
    threads: 2
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    conda:
        "../../envs/gpu.yaml"
    shell:
        "hpa-batch predict --config-json {params.cfg} --model {wildcards.model} --shard {wildcards.shard}"
        " --models {input.models} --tiles {input.tiles} --out {output} > {log} 2>&1"


rule train:
    input:
        METADATA,
        trained_models(),


rule predict:
    input:
        METADATA,
        [
            f"{RESULTS}/predictions/{spec['name']}/{shard}.parquet"
            for spec in config["models"]
            for shard in SHARDS
        ],
