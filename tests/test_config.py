import json
from pathlib import Path

import pytest
import yaml

from hpa_batch.config import (
    ConfigError,
    config_from_dict,
    load_config,
    load_schema,
    stage_subset,
)

REPO = Path(__file__).resolve().parents[1]


def test_defaults_fill_nested():
    cfg = config_from_dict({})
    assert cfg.shard_size == 250 and cfg.catalog.name == "hpa2021" and cfg.cell_lines is None
    assert cfg.conversion.codec.cname == "zstd" and cfg.conversion.codec.shuffle == "bitshuffle"
    assert cfg.conversion.chunk == 512 and cfg.conversion.min_level_size == 512
    assert cfg.raw["dataset"]["extensions"] == ["png", "tif", "tiff", "jpg"]


def test_errors_list_every_problem():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"shard_size": 0, "labels": {"catalog": "x"}, "bogus": 1})
    text = str(err.value)
    assert "shard_size" in text and "labels.catalog" in text and "bogus" in text


def test_cell_line_list_and_json_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cell_lines": ["HeLa"], "conversion": {"chunk": 256}}))
    cfg = load_config(path, json.dumps({"conversion": {"codec": {"clevel": 3}}}))
    assert cfg.cell_lines == ("HeLa",)
    assert cfg.conversion.chunk == 256 and cfg.conversion.codec.clevel == 3
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(None, "{")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_validate_and_document_every_key():
    schema = load_schema()
    text = (REPO / "config" / "config.yaml").read_text()

    def keys(node, prefix=""):
        for name, sub in node.get("properties", {}).items():
            yield name
            yield from keys(sub, prefix + name + ".")

    missing = [k for k in keys(schema) if f"{k}:" not in text]
    assert not missing, f"config.yaml does not list {missing}"
    for name in ("config.yaml", "demo.yaml"):
        load_config(REPO / "config" / name)


def test_library_and_workflow_share_one_schema():
    assert (REPO / "hpa_batch" / "schemas" / "config.schema.yaml").resolve() == (
        REPO / "workflow" / "schemas" / "config.schema.yaml"
    ).resolve()


def test_stage_subset_is_stable():
    a = stage_subset({"b": {"y": 1, "x": 2}, "a": 1, "c": 3}, ("b", "a"))
    assert a == '{"a":1,"b":{"x":2,"y":1}}'


def test_presets_validate_and_carry_the_seed_values():
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    from hpa_batch.config import config_from_dict, deep_merge

    for preset in sorted((REPO / "config" / "presets").glob("*.yaml")):
        cfg = config_from_dict(deep_merge(base, yaml.safe_load(preset.read_text())))
        assert cfg.raw["models"], preset
    seed = config_from_dict(deep_merge(base, yaml.safe_load((REPO / "config/presets/seed_resnet50.yaml").read_text())))
    m = seed.raw["models"][0]
    assert (m["arch"], m["input_size"], m["epochs"], m["single_label_only"]) == ("resnet50", 256, 10, True)
    assert m["schedule"] == {
        "kind": "seed",
        "lr_start": 0.005,
        "lr_max": 0.0011,
        "lr_min": 0.0005,
        "rampup_epochs": 3,
        "sustain_epochs": 2,
        "exp_decay": 0.75,
    }
    assert m["loss"]["unweighted_classes"] == [11]
    from hpa_batch.cells.measure import STUDY_002_FEATURE_WEIGHTS

    def preset(name: str) -> dict:
        return config_from_dict(deep_merge(base, yaml.safe_load((REPO / "config/presets" / name).read_text()))).raw

    r34 = {m["name"]: m for m in preset("seed_resnet34_image.yaml")["models"]}
    assert tuple(r34["seed-resnet34-224-features"]["feature_weights"]) == STUDY_002_FEATURE_WEIGHTS
    channels = [m["channels"] for m in preset("seed_densenet121_channels.yaml")["models"]]
    assert channels == [["red+blue", "green"], ["0.5*red", "green", "0.5*blue"], ["red+blue", "green", "green"]]


def test_an_unlabelled_set_only_applies_models_trained_elsewhere(tmp_path):
    base = {"dataset": {"images_dirs": ["x"], "metadata": "t.csv", "label_column": None}}
    with pytest.raises(ConfigError, match=r"give each of \['cell'\] trained:"):
        config_from_dict({**base, "models": [{"name": "cell"}, {"name": "img", "trained": "/runs/a/models/img"}]})
    cfg = config_from_dict({**base, "models": [{"name": "img", "level": "image", "trained": str(tmp_path)}]})
    from hpa_batch.layout import fold_files

    with pytest.raises(FileNotFoundError, match="holds no fold<k>/model.pt"):
        fold_files(cfg.results_dir, cfg.models[0])
    for k in (2, 0):
        (tmp_path / f"fold{k}").mkdir()
        (tmp_path / f"fold{k}" / "model.pt").write_bytes(b"")
    (tmp_path / "fold1").mkdir()  # no model.pt: not a fold
    assert fold_files(cfg.results_dir, cfg.models[0], "history.csv") == [
        tmp_path / "fold0" / "history.csv",
        tmp_path / "fold2" / "history.csv",
    ]


def test_registry_names_are_the_schema_choices():
    """The registries are the one list of names: a newly registered schedule validates at once."""
    from hpa_batch.models.schedules import SCHEDULES, register_schedule

    schema = load_schema()
    model = schema["properties"]["baseline"]["properties"]["model"]
    from hpa_batch.results.classifiers import BASELINES

    assert model["enum"] == BASELINES.names()
    with pytest.raises(ConfigError, match="'warmup_then_flat' is not allowed"):
        config_from_dict({"models": [{"name": "m", "schedule": {"kind": "warmup_then_flat"}}]})
    register_schedule("warmup_then_flat")(lambda epochs, **kw: lambda e: 0.1)
    try:
        cfg = config_from_dict({"models": [{"name": "m", "schedule": {"kind": "warmup_then_flat"}}]})
        assert cfg.raw["models"][0]["schedule"]["kind"] == "warmup_then_flat"
    finally:
        SCHEDULES._factories.pop("warmup_then_flat")


def test_every_section_has_a_typed_view():
    cfg = config_from_dict(
        {
            "models": [{"name": "m", "level": "image", "folds": [0, 2], "trained": "~/run/models/m"}],
            "evaluation": {"truth_dir": "truth"},
            "splits": {"n_folds": 3},
        }
    )
    (m,) = cfg.models
    assert (m.name, m.level, m.folds, m.trained.name) == ("m", "image", (0, 2), "m") and m.arch == "resnet50"
    assert cfg.splits.n_folds == 3 and cfg.evaluation.truth_dir == Path("truth") and cfg.merge.fusion == "product"
    assert cfg.baseline.model == "hist_gradient_boosting" and cfg.report.overlays == 6
    sections = set(load_schema()["properties"]) - {"results_dir", "logs_dir", "labels", "cell_lines", "shard_size"}
    assert sections <= {f for f in cfg.__dataclass_fields__}, sections - set(cfg.__dataclass_fields__)


def test_every_schema_property_has_a_description():
    """The workflow catalog (and config/README.md) render the schema: every key says what it does."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    missing = []

    def walk(node, path):
        if not isinstance(node, dict):
            return
        for key, sub in node.get("properties", {}).items():
            if not (isinstance(sub, dict) and sub.get("description")):
                missing.append(f"{path}{key}")
            walk(sub, f"{path}{key}.")
        walk(node.get("items"), path)

    walk(schema, "")
    assert missing == []


def test_workflow_catalog_files_agree_with_the_workflow():
    import tomllib

    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    usage = catalog["usage"]
    assert usage["mandatory-flags"]["desc"] and usage["report"] is True
    assert "\nreport:" in (REPO / "Snakefile").read_text()  # it has a report, as declared
    assert usage["software-stack-deployment"]["conda"] is True and list((REPO / "envs").glob("*.yaml"))
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    readme = (REPO / "config" / "README.md").read_text()
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    for section in schema["properties"]:
        assert f"`{section}`" in readme, section  # every top-level section is explained


def test_segmentation_backends_in_the_schema_are_the_registry():
    """A misspelt backend is refused when the config is read (before any shard converts), naming the
    choices; the schema's list is the registry's."""
    from hpa_batch.cells.segment import list_backends

    schema = load_schema()
    assert schema["properties"]["segmentation"]["properties"]["backend"]["enum"] == list_backends()
    with pytest.raises(ConfigError, match="'watershedd' is not allowed; did you mean `watershed`"):
        config_from_dict({"segmentation": {"backend": "watershedd"}})


def test_a_stage_cannot_read_a_section_its_rule_does_not_pass():
    """A rule passes its stage's sections as ``--config-json``; reading any other section fails with
    its name instead of silently seeing the defaults (an edit of it would not rerun the job)."""
    from hpa_batch.config import restrict

    cfg = restrict(
        config_from_dict({"merge": {"fusion": "mean"}, "labels": {"catalog": "hpa2018"}}), ["merge", "labels"]
    )
    assert cfg.merge.fusion == "mean" and cfg.catalog.name == "hpa2018" and cfg.results_dir == Path("results")
    with pytest.raises(ConfigError, match="reads the config section 'report', which its Snakemake rule does not pass"):
        cfg.report  # noqa: B018
    with pytest.raises(ConfigError, match="'models'"):
        cfg.merged_model("cell")  # reads models
    with pytest.raises(ConfigError, match="unknown config sections"):
        restrict(cfg, ["nonsense"])


def test_a_checkpoint_entry_round_trips_and_an_older_one_takes_the_defaults():
    """``ModelSpec.to_entry`` is what a checkpoint stores; reading it back gives the same spec, and an
    entry written before a key existed takes that key's default (the stored spec stays loadable)."""
    from hpa_batch.config import model_spec_from_entry

    cfg = config_from_dict(
        {"models": [{"name": "m", "schedule": {"kind": "cosine", "lr": 0.002}, "loss": {"unweighted_classes": [11]}}]}
    )
    (spec,) = cfg.models
    assert model_spec_from_entry(spec.to_entry()) == spec and spec.to_entry() == cfg.raw["models"][0]
    assert spec.schedule.params == {"lr": 0.002} and spec.loss.unweighted_classes == (11,)
    old = {k: v for k, v in spec.to_entry().items() if k not in ("drop_path", "log_every_s", "augment")}
    again = model_spec_from_entry(old)
    assert again.drop_path == 0.0 and again.log_every_s == 30 and again.augment.flips and again.name == "m"
    with pytest.raises(ConfigError, match="arch"):
        model_spec_from_entry({**old, "arch": 5})


def test_a_config_typo_is_one_line_naming_the_key_the_file_and_a_near_match(tmp_path):
    """``modles:`` is named as an unknown key with the near match and the file, never with the schema or
    the whole config; the Snakefile says the same before Snakemake's own validate would dump both."""
    import subprocess

    from conftest import tool_env

    path = tmp_path / "my run.yaml"
    path.write_text(yaml.safe_dump({"modles": [], "segmentation": {"backend": "watershd"}, "shard_size": "x"}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert lines == [
        f"invalid configuration in {path}:",
        "  `modles`: unknown key; did you mean `models`?",
        "  `segmentation.backend`: 'watershd' is not allowed; did you mean `watershed`?",
        "  `shard_size`: 'x' is not of type 'integer'",
    ]
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        ["snakemake", "-n", "--configfile", str(path)],
        cwd=repo,
        env=tool_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "`modles`: unknown key; did you mean `models`?" in out
    assert str(path) in out and len(out.splitlines()) < 15, out
