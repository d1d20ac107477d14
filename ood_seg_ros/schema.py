"""
Declared schemas (pydantic v2) of the JSON files the package reads: bundle.json, meta.json.

Every file is validated as a whole at load time and every bad field is reported at once,
in one line: ``<file>: config.input_size: expected 2 items, got 3; runtime.normalisation:
expected an object, got str``. Types are strict (a string is never read as a number);
integers are accepted where floats are expected.

- ``config``: the fields of :class:`ood_seg_ros.model.config.ModelConfig`, plus
  ``sml_stats`` (object or null). Unknown keys are rejected.
- ``runtime``: the known keys are type-checked, other keys are allowed (no warning);
  ``sizes`` maps ``"<H>x<W>"`` to per-input-size ``normalisation`` and
  ``segment_threshold``, and under ``regions`` the same per heatmap region mode
  (``drivable``); ``obstacle`` holds the drivable prior and road band settings.
- ``info``: free-form provenance (e.g. ``trained_splits``), any JSON object.

Score names (``heatmap_score``, normalisation keys) are checked against
:data:`ood_seg_ros.scores.ALL_SCORES` at validation time, so scores added later are
accepted without touching this module.
"""

from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, field_validator, StrictBool, StrictFloat,
                      StrictInt, StrictStr, ValidationError)

from . import scores
from .errors import OodSegError

Number = Union[StrictInt, StrictFloat]
Pair = Annotated[List[Number], Field(min_length=2, max_length=2)]
Triple = Annotated[List[Number], Field(min_length=3, max_length=3)]
Size = Annotated[List[StrictInt], Field(min_length=2, max_length=2)]
# Structural upper bounds of a network config: far above any network this package builds,
# low enough that building one to estimate its memory is cheap. The memory the sizes
# imply together (weights + activations at the input size) is checked next, against this
# machine (ood_seg_ros.model.budget).
MAX_CHANNELS = 4096
MAX_PROBE_DEPTH = 64
MAX_CLASSES = 1024
MAX_INPUT_SIDE = 16384
Channels = Annotated[StrictInt, Field(ge=1, le=MAX_CHANNELS)]
InputSize = Annotated[List[Annotated[StrictInt, Field(ge=1, le=MAX_INPUT_SIDE)]],
                      Field(min_length=2, max_length=2)]


def _check_scores(names, what: str):
    unknown = [n for n in names if n not in scores.ALL_SCORES]
    if unknown:
        raise ValueError(f'unknown {what} {", ".join(map(repr, unknown))}')
    return names


class _Closed(BaseModel):
    model_config = ConfigDict(extra='forbid', strict=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra='allow', strict=True)


class ConfigSchema(_Closed):
    """``config`` of bundle.json: ModelConfig fields (all optional: defaults apply)."""

    backbone: Optional[StrictStr] = None
    class_names: Optional[Annotated[List[StrictStr],
                                    Field(min_length=2, max_length=MAX_CLASSES)]] = None
    ignore_index: Optional[Annotated[StrictInt, Field(ge=0, le=255)]] = None
    palette: Optional[List[Annotated[List[Annotated[StrictInt, Field(ge=0, le=255)]],
                                     Field(min_length=3, max_length=3)]]] = None
    output_stride: Optional[StrictInt] = None
    aspp_channels: Optional[Channels] = None
    decoder_channels: Optional[Channels] = None
    low_level_project: Optional[Channels] = None
    separable: Optional[StrictBool] = None
    probe_depth: Optional[Annotated[StrictInt, Field(ge=1, le=MAX_PROBE_DEPTH)]] = None
    probe_channels: Optional[Channels] = None
    probe_separable: Optional[StrictBool] = None
    pgn_exact: Optional[StrictBool] = None
    pgn_bias: Optional[StrictBool] = None
    input_size: Optional[InputSize] = None
    mean: Optional[Triple] = None
    std: Optional[Triple] = None
    outputs: Optional[List[StrictStr]] = None
    sml_stats: Optional[Dict[str, Any]] = None


Normalisation = Dict[StrictStr, Pair]


class RegionSchema(_Open):
    """Per-region calibration: ``runtime.sizes["<H>x<W>"].regions["drivable"]``."""

    heatmap_score: Optional[StrictStr] = None
    normalisation: Optional[Normalisation] = None
    segment_threshold: Optional[Annotated[Number, Field(gt=0, lt=1)]] = None

    @field_validator('heatmap_score')
    @classmethod
    def _known_score(cls, v):
        return v if v is None else _check_scores([v], 'heatmap score')[0]

    @field_validator('normalisation')
    @classmethod
    def _known_norm(cls, v):
        return v if v is None else (_check_scores(v, 'score in normalisation') and v)


class SizeSchema(RegionSchema):
    """Per-input-size calibration: ``runtime.sizes["<H>x<W>"]``."""

    regions: Optional[Dict[Literal['drivable'], RegionSchema]] = None


class ObstacleSchema(_Closed):
    """``runtime.obstacle``: drivable prior, road band, contrast (see ood_seg_ros.obstacle)."""

    drivable_classes: Optional[Annotated[List[StrictStr], Field(min_length=1)]] = None
    margin: Optional[Annotated[Number, Field(ge=0)]] = None
    falloff: Optional[Annotated[Number, Field(gt=0)]] = None
    floor: Optional[Annotated[Number, Field(ge=0, le=1)]] = None
    close: Optional[Annotated[Number, Field(ge=0)]] = None
    band_rows: Optional[Union[Pair, Literal['auto']]] = None
    band_width: Optional[Annotated[StrictInt, Field(ge=0)]] = None
    band_fusion: Optional[Literal['max', 'mean']] = None
    contrast: Optional[Annotated[Number, Field(ge=0)]] = None
    contrast_window: Optional[Annotated[StrictInt, Field(ge=3)]] = None


class RuntimeSchema(RegionSchema):
    """``runtime`` of bundle.json: known keys type-checked, other keys allowed."""

    min_segment_px: Optional[Annotated[StrictInt, Field(ge=1)]] = None
    meta_threshold: Optional[Annotated[Number, Field(ge=0, le=1)]] = None
    meta_pgn_names: Optional[List[StrictStr]] = None
    calibration: Optional[Dict[str, Any]] = None
    score_options: Optional[Dict[str, Any]] = None
    obstacle: Optional[ObstacleSchema] = None
    heatmap_region: Optional[Literal['all', 'drivable']] = None
    sizes: Optional[Dict[Annotated[str, Field(pattern=r'^[1-9][0-9]*x[1-9][0-9]*$')],
                         SizeSchema]] = None

    @field_validator('meta_pgn_names')
    @classmethod
    def _known_pgn(cls, v):
        return v if v is None else _check_scores(v, 'PGN score')


class BundleSchema(_Open):
    """bundle.json as a whole (extra top-level keys are allowed)."""

    format_version: StrictInt
    config: ConfigSchema
    runtime: RuntimeSchema = Field(default_factory=RuntimeSchema)
    info: Dict[str, Any] = Field(default_factory=dict)


class MetaSchema(_Closed):
    """meta.json: the meta classifier (see :class:`ood_seg_ros.meta.MetaClassifier`)."""

    format: StrictStr  # noqa: A003 - the file's key
    version: StrictInt
    feature_names: List[StrictStr]
    mean: List[Number]
    scale: List[Number]
    coef: List[Number]
    reg_coef: List[Number]
    intercept: Number
    reg_intercept: Number
    threshold: Annotated[Number, Field(ge=0, le=1)]
    info: Optional[Dict[str, Any]] = None


_TYPE_WORDS = {'dict_type': 'expected an object', 'list_type': 'expected a list',
               'int_type': 'expected an integer', 'string_type': 'expected a string',
               'bool_type': 'expected true or false', 'float_type': 'expected a number',
               'missing': 'required field is missing',
               'extra_forbidden': 'unknown key', 'too_long': 'too many items',
               'too_short': 'too few items'}


def _describe(err: dict) -> str:
    loc = [str(p) for p in err['loc']]
    # A Union of int/float reports one error per member: name the field, say "number".
    if len(loc) >= 2 and loc[-1] in ('int', 'float') and err['type'].endswith('_type'):
        loc, text = loc[:-1], 'expected a number'
    else:
        text = _TYPE_WORDS.get(err['type'], err['msg'])
        if err['type'] in ('too_long', 'too_short', 'value_error', 'string_pattern_mismatch'):
            text = err['msg'].replace('Value error, ', '')
    got = err.get('input')
    if err['type'] not in ('missing', 'extra_forbidden', 'value_error') and \
            not isinstance(got, (dict, list)):
        text += f', got {type(got).__name__} {got!r}'[:120]
    elif err['type'].endswith('_type'):
        text += f', got {type(got).__name__}'
    return f'{".".join(loc) or "(top level)"}: {text}'


def validate(schema, doc, where: str) -> dict:
    """Validate ``doc`` against ``schema``; OodSegError listing every bad field at once."""
    if not isinstance(doc, dict):
        raise OodSegError(f'{where}: expected a JSON object at the top level, got '
                          f'{type(doc).__name__}')
    try:
        schema.model_validate(doc)
    except ValidationError as exc:
        lines, seen = [], set()
        for err in exc.errors():
            line = _describe(err)
            if line not in seen:
                seen.add(line)
                lines.append(line)
        raise OodSegError(f'{where}: {len(lines)} bad field{"s" if len(lines) > 1 else ""}: '
                          + '; '.join(lines)) from None
    return doc


def validate_bundle(doc, where: str) -> dict:
    """Check a parsed bundle.json (see :class:`BundleSchema`)."""
    return validate(BundleSchema, doc, where)


def validate_meta(doc, where: str) -> dict:
    """Check a parsed meta.json (see :class:`MetaSchema`)."""
    return validate(MetaSchema, doc, where)
