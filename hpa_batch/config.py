"""Typed view of the one configuration schema (``workflow/schemas/config.schema.yaml``).

The Snakefile validates ``config/config.yaml`` against the same schema; the library validates
whatever it is handed (a YAML file, a dict, or a partial JSON string from a rule's params) and fills
the schema's defaults, so a stage run from the CLI sees exactly what a stage run by Snakemake sees.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import yaml

from hpa_batch.core.labels import LabelCatalog, get_catalog
from hpa_batch.core.shards import CodecConfig
from hpa_batch.spec import HEADS, EncoderSpec, Level, ModelSpec, encoder_from_entry, spec_from_entry


class ConfigError(ValueError):
    """Configuration that does not satisfy the schema."""


#: Schema properties marked ``x-registry: <name>`` accept exactly the names registered there.
REGISTRIES = {
    "schedules": ("hpa_batch.models.schedules", "SCHEDULES"),
    "baselines": ("hpa_batch.results.classifiers", "BASELINES"),
    "catalogs": ("hpa_batch.core.labels", "CATALOGS"),
}


def _registered(name: str) -> list[str]:
    import importlib

    module, attr = REGISTRIES[name]
    registry = getattr(importlib.import_module(module), attr)
    return sorted(registry) if isinstance(registry, dict) else registry.names()


def _fill_registries(node: Any) -> None:
    """Give every ``x-registry`` property of the schema the registry's names as its ``enum``."""
    if isinstance(node, dict):
        if "x-registry" in node:
            node["enum"] = _registered(node["x-registry"])
        for value in node.values():
            _fill_registries(value)
    elif isinstance(node, list):
        for value in node:
            _fill_registries(value)


def load_schema() -> dict[str, Any]:
    """Return the configuration JSON schema as a dict, registry names filled in as enums (the
    registries are the one list of the names; the Snakefile's ``validate`` sees the file without them
    and ``config_from_dict`` checks them)."""
    text = resources.files("hpa_batch").joinpath("schemas/config.schema.yaml").read_text()
    schema = yaml.safe_load(text)
    _fill_registries(schema)
    return schema


def _with_defaults(validator_cls: Any) -> Any:
    """Extend a jsonschema validator class so validation fills ``default`` values in place."""
    validate_props = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(jsonschema.Draft202012Validator)


def validate_config(raw: Mapping[str, Any] | None, *, source: str | None = None) -> dict[str, Any]:
    """Validate a (possibly partial) config and return a deep copy with defaults filled.

    Raises
    ------
    ConfigError
        One line per violation: the key path, what is wrong, the allowed keys or values or a near match
        ("`modles`: unknown key; did you mean `models`?"), and the file (``source``) when given.
    """
    data = copy.deepcopy(dict(raw or {}))
    validator = _DefaultingValidator(load_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.path])
    if errors:
        lines = [f"  {line}" for e in errors for line in error_lines(e)]
        where = f" in {source}" if source else ""
        raise ConfigError(f"invalid configuration{where}:\n" + "\n".join(lines))
    return data


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _near(word: str, choices: Sequence[str]) -> str:
    import difflib

    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    if found:
        return f"; did you mean `{found[0]}`?"
    return f" (allowed: {', '.join(map(str, choices))})" if len(choices) <= 30 else ""


def error_lines(error: jsonschema.ValidationError) -> list[str]:
    """One line per problem of a schema violation, never the schema or the whole value."""
    where = ".".join(str(p) for p in error.path)
    prefix = f"{where}." if where else ""
    schema: Any = error.schema
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(schema.get("properties", {}))
        return [f"`{prefix}{k}`: unknown key{_near(k, allowed)}" for k in error.instance if k not in allowed]
    if error.validator == "enum":
        choices: Any = error.validator_value
        return [f"`{where}`: {_short(error.instance)} is not allowed{_near(str(error.instance), list(choices))}"]
    if error.validator == "required":
        return [f"`{prefix or '<top level>'}`: {error.message.split(' is a required')[0]} is required"]
    message = " ".join(error.message.split())
    if len(message) > 200:
        message = message[:197] + "..."
    return [f"`{where or '<top level>'}`: {message}"]


def check_config(raw: Mapping[str, Any], files: Sequence[str | Path] = ()) -> None:
    """What the Snakefile runs before Snakemake's own ``validate``: a config error in one line per
    problem, naming the config file(s), instead of the schema and config dumps.

    Raises
    ------
    ConfigError
    """
    validate_config(raw, source=", ".join(map(str, files)) or None)


@dataclass(frozen=True)
class DatasetConfig:
    """Where the raw images and the metadata table are, and how to read them."""

    name: str
    images_dirs: tuple[Path, ...]
    metadata: Path
    id_column: str
    label_column: str | None
    cell_line_column: str | None
    label_separator: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class QCConfig:
    """Limits applied when images are admitted."""

    max_pixels: int
    min_side: int


@dataclass(frozen=True)
class ConversionConfig:
    """OME-Zarr conversion settings."""

    chunk: int
    min_level_size: int
    max_levels: int | None
    codec: CodecConfig
    pixel_size_um: float | None
    parallelism: str = "threads"
    max_saturated_fraction: float = 0.5


@dataclass(frozen=True)
class SegmentationConfig:
    """Which backend segments cells, at which pyramid level, and which cells are kept."""

    backend: str
    max_size: int
    options: dict[str, Any]
    min_cell_area: int
    exclude_border: bool


@dataclass(frozen=True)
class SegmentationQCConfig:
    """When a segmented image is doubtful, and what happens to doubtful images."""

    min_cell_nucleus_ratio: float
    max_no_nucleus_fraction: float
    max_multi_nucleus_fraction: float
    max_nuclei_outside_fraction: float
    max_unsupported_boundary_fraction: float
    max_size_outlier_fraction: float
    max_distance_disagreement: float
    max_edge_disagreement: float
    outlier_mads: float
    outlier_measures: tuple[str, ...]
    min_images_for_outliers: int
    doubtful: str


@dataclass(frozen=True)
class MeasureConfig:
    """Parameters of the hand-crafted localisation features."""

    blob_quantile: float
    background_sigmas: float


@dataclass(frozen=True)
class IntensityConfig:
    """16-bit -> uint8 mapping of the tiles."""

    mode: str
    low: float
    high: float


@dataclass(frozen=True)
class TilesConfig:
    """Cell tiles and whole-image inputs."""

    size: int
    margin: float
    mask_outside: bool
    image_size: int
    include_border: bool
    chunk_tiles: int
    intensity: IntensityConfig


@dataclass(frozen=True)
class SplitsConfig:
    """Multilabel-stratified folds."""

    n_folds: int
    seed: int
    min_combination: int
    group_column: str | None = None


@dataclass(frozen=True)
class MergeConfig:
    """Which models feed the merged tables and how cell and image probabilities fuse."""

    cell_model: str | None
    image_model: str | None
    fusion: str
    cell_weight: float
    negative: str
    negative_confidence: str = "model"


@dataclass(frozen=True)
class BaselineConfig:
    """The scikit-learn baseline on the per-cell features."""

    enabled: bool
    model: str
    embeddings: bool
    max_train_cells: int
    cv_folds: int
    n_jobs: int
    seed: int
    trained: Path | None = None  # another run's results/baseline folder, applied instead of training


@dataclass(frozen=True)
class EvaluationConfig:
    """Scoring: per-cell truth and the prediction guard."""

    truth_dir: Path | None
    max_class_share: float


@dataclass(frozen=True)
class H5adConfig:
    """What ``cells.h5ad`` holds beyond the cells table and embeddings."""

    umap_cells: int


@dataclass(frozen=True)
class ReportConfig:
    """What the HTML report shows."""

    overlays: int
    gallery_per_class: int
    max_rejected: int
    umap_cells: int


@dataclass(frozen=True)
class Config:
    """The whole validated configuration.

    Attributes
    ----------
    raw : dict
        The validated dict with defaults (what Snakemake's ``config`` holds).
    """

    raw: dict[str, Any]
    results_dir: Path
    logs_dir: Path
    dataset: DatasetConfig
    catalog: LabelCatalog
    cell_lines: tuple[str, ...] | None
    shard_size: int
    qc: QCConfig
    conversion: ConversionConfig
    segmentation: SegmentationConfig
    segmentation_qc: SegmentationQCConfig
    measure: MeasureConfig
    tiles: TilesConfig
    splits: SplitsConfig
    models: tuple[ModelSpec, ...]
    merge: MergeConfig
    baseline: BaselineConfig
    evaluation: EvaluationConfig
    h5ad: H5adConfig
    report: ReportConfig
    encoders: tuple[EncoderSpec, ...] = ()
    passed: frozenset[str] | None = None
    """The top-level sections a Snakemake rule passed (``--config-json`` alone); reading any other
    section raises :class:`ConfigError` (:func:`restrict`). None: every section (a config file)."""

    if not TYPE_CHECKING:  # mypy keeps checking attribute names; the guard runs at run time

        def __getattribute__(self, name: str) -> Any:
            passed = object.__getattribute__(self, "passed")
            section = _SECTION_OF.get(name)
            if passed is not None and section is not None and section not in passed:
                raise ConfigError(
                    f"this stage reads the config section {section!r}, which its Snakemake rule does not pass "
                    "(add it to the rule's stage_config(...) in workflow/rules, or the stage would see "
                    "defaults instead of the user's values)"
                )
            return object.__getattribute__(self, name)

    def model(self, name: str) -> ModelSpec:
        """The model named ``name``.

        Raises
        ------
        KeyError
            No model of that name; the message lists the configured ones.
        """
        return _named(self.models, name, "model")

    def encoder(self, name: str) -> EncoderSpec:
        """The encoder named ``name``.

        Raises
        ------
        KeyError
            No encoder of that name; the message lists the configured ones.
        """
        return _named(self.encoders, name, "encoder")

    def merged_model(self, level: Level) -> ModelSpec | None:
        """The model whose predictions feed the merged tables at ``level``: ``merge.{level}_model`` when
        set, else the first model of that level, else None."""
        chosen = self.merge.cell_model if level == "cell" else self.merge.image_model
        if chosen:
            return self.model(chosen)
        return next((m for m in self.models if m.level == level), None)

    def compared_models(self) -> list[ModelSpec]:
        """The cell-level models scored side by side on the same cells (``models`` of metrics.json):
        every one, when the run has two or more (timm models, heads on encoder embeddings); else none."""
        cells = [m for m in self.models if m.level == "cell"]
        return cells if len(cells) > 1 else []

    def trained_here(self) -> list[ModelSpec]:
        """The models this run trains (every model without ``trained:``)."""
        return [m for m in self.models if not m.external]

    def trained_folds(self) -> tuple[list[int], bool]:
        """Folds this run trains of the models feeding the merged tables, and whether every such model
        was trained by another run (then no image of this run was seen in training)."""
        models = [m for m in (self.merged_model("cell"), self.merged_model("image")) if m]
        local = [m for m in models if not m.external]
        return sorted({k for m in local for k in m.folds}), bool(models) and not local


def _named(specs: tuple[Any, ...], name: str, what: str) -> Any:
    """The entry of ``specs`` named ``name`` (KeyError listing the configured names)."""
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"no {what} named {name!r} in the config; known: {[s.name for s in specs]}")


#: The typed attribute each top-level config key fills (what :func:`restrict` guards).
_SECTION_OF: dict[str, str] = {
    "dataset": "dataset",
    "catalog": "labels",
    "cell_lines": "cell_lines",
    "shard_size": "shard_size",
    "qc": "qc",
    "conversion": "conversion",
    "segmentation": "segmentation",
    "segmentation_qc": "segmentation_qc",
    "measure": "measure",
    "tiles": "tiles",
    "splits": "splits",
    "models": "models",
    "encoders": "encoders",
    "merge": "merge",
    "baseline": "baseline",
    "evaluation": "evaluation",
    "h5ad": "h5ad",
    "report": "report",
}


def restrict(cfg: Config, sections: Iterable[str]) -> Config:
    """``cfg`` with only ``sections`` (top-level keys) readable: what a stage run by a Snakemake rule
    sees, so a stage that reads a section its rule does not pass fails with the section's name
    instead of silently using the defaults (the rule would not rerun when the user edits it)."""
    unknown = set(sections) - set(_SECTION_OF.values()) - {"results_dir", "logs_dir"}
    if unknown:
        raise ConfigError(f"unknown config sections {sorted(unknown)}")
    return dataclasses.replace(cfg, passed=frozenset(sections))


def check_unlabelled(cfg: Config) -> None:
    """An unlabelled set (``dataset.label_column: null``) has nothing to train on: every model must be
    applied from another run (``trained:``).

    Raises
    ------
    ConfigError
        Naming the models without ``trained:``.
    """
    if cfg.dataset.label_column is not None:
        return
    untrained = [m.name for m in cfg.models if not m.external]
    if untrained:
        raise ConfigError(
            f"dataset.label_column is null (an unlabelled set), so models cannot be trained here; "
            f"give each of {untrained} trained: <another run's results/models/<name> folder>"
        )


def check_heads(cfg: Config, *, encoders: bool = True) -> None:
    """A model on an encoder's embeddings (``encoder`` set) is a cell-level ``linear`` or ``mlp`` head
    without hand-crafted features; with ``encoders``, its encoder must be configured.

    Raises
    ------
    ConfigError
        Naming the model and what is wrong.
    """
    names = {e.name for e in cfg.encoders} if encoders else set()
    for m in cfg.models:
        if m.encoder is None:
            continue
        where = f"models: {m.name!r} (encoder {m.encoder!r})"
        if m.arch not in HEADS:
            raise ConfigError(
                f"{where}: arch must be one of {sorted(HEADS)} (a head on the embeddings), not {m.arch!r}"
            )
        if m.level != "cell" or m.features:
            raise ConfigError(f"{where}: a head on cell embeddings is level: cell without features")
        if encoders and m.encoder not in names:
            raise ConfigError(f"{where}: no encoder of that name in encoders (known: {sorted(names)})")


def config_from_dict(raw: Mapping[str, Any] | None, *, source: str | None = None) -> Config:
    """Validate ``raw`` (filling defaults; errors name ``source``, the config file) and build the typed view."""
    d = validate_config(raw, source=source)
    cfg = _typed(d)
    if "models" in (raw or {}):  # a stage's subset (no models) leaves the default list unchecked
        check_unlabelled(cfg)
        check_heads(cfg, encoders="encoders" in (raw or {}))  # a rule's subset for a head carries no encoders
    return cfg


def _typed(d: dict[str, Any]) -> Config:
    ds, conv = d["dataset"], d["conversion"]
    return Config(
        raw=d,
        results_dir=Path(d["results_dir"]),
        logs_dir=Path(d["logs_dir"]),
        dataset=DatasetConfig(
            name=ds["name"],
            images_dirs=tuple(Path(p) for p in ds["images_dirs"]),
            metadata=Path(ds["metadata"]),
            id_column=ds["id_column"],
            label_column=ds["label_column"],
            cell_line_column=ds["cell_line_column"],
            label_separator=ds["label_separator"],
            extensions=tuple(ds["extensions"]),
        ),
        catalog=get_catalog(d["labels"]["catalog"]),
        cell_lines=None if d["cell_lines"] == "all" else tuple(d["cell_lines"]),
        shard_size=d["shard_size"],
        qc=QCConfig(**d["qc"]),
        conversion=ConversionConfig(
            chunk=conv["chunk"],
            min_level_size=conv["min_level_size"],
            max_levels=conv["max_levels"],
            codec=CodecConfig(**conv["codec"]),
            pixel_size_um=conv["pixel_size_um"],
            parallelism=conv["parallelism"],
            max_saturated_fraction=conv["max_saturated_fraction"],
        ),
        segmentation=SegmentationConfig(**d["segmentation"]),
        segmentation_qc=SegmentationQCConfig(
            **{**d["segmentation_qc"], "outlier_measures": tuple(d["segmentation_qc"]["outlier_measures"])}
        ),
        measure=MeasureConfig(**d["measure"]),
        tiles=TilesConfig(
            **{k: v for k, v in d["tiles"].items() if k != "intensity"},
            intensity=IntensityConfig(**d["tiles"]["intensity"]),
        ),
        splits=SplitsConfig(**d["splits"]),
        models=tuple(spec_from_entry(m) for m in d["models"]),
        merge=MergeConfig(**d["merge"]),
        baseline=BaselineConfig(
            **{**d["baseline"], "trained": Path(d["baseline"]["trained"]) if d["baseline"]["trained"] else None}
        ),
        evaluation=EvaluationConfig(
            truth_dir=Path(d["evaluation"]["truth_dir"]) if d["evaluation"]["truth_dir"] else None,
            max_class_share=d["evaluation"]["max_class_share"],
        ),
        h5ad=H5adConfig(**d["h5ad"]),
        report=ReportConfig(**d["report"]),
        encoders=tuple(encoder_from_entry(e) for e in d["encoders"]),
    )


def model_spec_from_entry(entry: Mapping[str, Any]) -> ModelSpec:
    """The :class:`~hpa_batch.spec.ModelSpec` of one ``models[]`` entry (a checkpoint's stored spec),
    validated with the schema's defaults filled (an entry from before a key existed takes its default).

    Raises
    ------
    ConfigError
        The entry does not satisfy the schema.
    """
    return spec_from_entry(validate_config({"models": [dict(entry)]})["models"][0])


def load_config(path: str | Path | None = None, overrides_json: str | None = None) -> Config:
    """Load a YAML config file and/or a JSON object of overrides (deep-merged on top).

    Parameters
    ----------
    path : str or Path, optional
        YAML file such as ``config/config.yaml``.
    overrides_json : str, optional
        JSON object, e.g. the stage subset a Snakemake rule passes in its params.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        raw = yaml.safe_load(p.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p} does not hold a mapping")
    if overrides_json:
        try:
            extra = json.loads(overrides_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json is not valid JSON: {exc}") from None
        raw = deep_merge(raw, extra)
    return config_from_dict(raw, source=str(path) if path is not None else None)


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively with ``extra`` (neither is modified)."""
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def stage_subset(raw: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """Compact, key-sorted JSON of the ``keys`` of a config: top-level sections (``"merge"``) or
    single keys of one (``"evaluation.truth_dir"``).

    Rules pass this as a param, so a job reruns when (and only when) the part of the
    configuration it reads changes.
    """
    out: dict[str, Any] = {}
    for key in keys:
        section, _, name = key.partition(".")
        if section not in raw:
            continue
        if name:
            if name in raw[section]:
                out.setdefault(section, {})[name] = raw[section][name]
        else:
            out[section] = raw[section]
    return json.dumps(out, sort_keys=True, separators=(",", ":"))
