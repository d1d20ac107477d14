"""Architecture and output configuration of the OoD segmentation network."""

from dataclasses import asdict, dataclass, field, fields
import math
from typing import List, Optional, Tuple

from .backbones import backbone_names
from .budget import check_memory
from .default_classes import DEFAULT_CLASS_NAMES
from ..errors import OodSegError
from ..scores import (ALL_SCORES, EXTRA_OUTPUTS, needs, NEEDS_SML, NEEDS_STATS, SCORES,
                      STANDARD_SCORES)

# Heads with their own SML statistics, in the MOoSe member order of the forward pass.
SML_MEMBERS = ('probe0', 'probe1', 'probe2', 'probe3', 'global')


def size_key(size) -> str:
    """Key of an input size (H, W) in the bundle's per-size settings: ``'HxW'``."""
    return f'{int(size[0])}x{int(size[1])}'


def parse_size(text) -> Tuple[int, int]:
    """``'480x960'`` (H x W) or a pair -> (480, 960); OodSegError otherwise."""
    try:
        if isinstance(text, str):
            h, w = (int(v) for v in text.lower().split('x'))
        else:
            h, w = (int(v) for v in text)
    except (TypeError, ValueError):
        raise OodSegError(f'input size must be HxW (e.g. 480x960), got {text!r}') from None
    if h < 64 or w < 64:
        raise OodSegError(f'input size {h}x{w} must be at least 64x64')
    return h, w


def needs_sml(name: str) -> bool:
    """Tell whether score ``name`` (or its spatial variant) needs SML statistics."""
    return NEEDS_SML in needs([name])


def needs_stats(name: str) -> bool:
    """Tell whether score ``name`` (or its spatial variant) needs training score statistics."""
    return NEEDS_STATS in needs([name])


def stat_members(name: str) -> set:
    """Scores whose training statistics ``name`` needs (the members of a fused score)."""
    spec = SCORES[name]
    return set(SCORES[spec.base or name].members)


def default_outputs() -> List[str]:
    """Return the outputs of a fresh config: probs and every score needing no statistics."""
    return ['probs'] + [n for n in STANDARD_SCORES if not needs_sml(n) and not needs_stats(n)]


@dataclass
class ModelConfig:
    """
    Everything needed to rebuild the network (stored in the model bundle).

    ``input_size`` is (height, width) of the network input; ``mean``/``std`` normalise
    RGB in [0, 1] inside the graph. ``outputs`` lists what the graph computes besides
    ``semantic``: score maps (names from :data:`ood_seg_ros.scores.ALL_SCORES`) and
    optionally ``logits`` / ``probs`` (:data:`ood_seg_ros.scores.EXTRA_OUTPUTS`).
    ``sml_stats``: per-class max-logit statistics for the SML scores (``ood-seg
    sml-stats``): ``{'split': ..., 'frames': N, 'members': {member: {'mean': [C],
    'std': [C]}}}`` for every member of :data:`SML_MEMBERS`; None when not gathered.
    ``class_names``, ``ignore_index`` (the label value losses and metrics ignore) and
    ``palette`` (RGB per class, or None) come from the training dataset
    (:mod:`ood_seg_ros.tools.data.datasets`); a bundle that names no classes has CamVid's
    (:mod:`.default_classes`).
    """

    backbone: str = 'lite0'
    class_names: Tuple[str, ...] = DEFAULT_CLASS_NAMES
    ignore_index: int = 255
    palette: Optional[Tuple[Tuple[int, int, int], ...]] = None
    output_stride: int = 16
    aspp_channels: int = 256
    decoder_channels: int = 256
    low_level_project: int = 48
    separable: bool = True
    probe_depth: int = 1
    probe_channels: int = 256
    probe_separable: bool = False
    pgn_exact: bool = False
    pgn_bias: bool = True
    input_size: Tuple[int, int] = (360, 480)
    mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    outputs: List[str] = field(default_factory=default_outputs)
    sml_stats: Optional[dict] = None

    @property
    def n_classes(self) -> int:
        """Return the number of semantic classes C."""
        return len(self.class_names)

    @property
    def aspp_rates(self) -> Tuple[int, int, int]:
        """Atrous rates of the three 3x3 ASPP branches."""
        return (6, 12, 18) if self.output_stride == 16 else (12, 24, 36)

    def validate(self) -> 'ModelConfig':
        """Check values; raise OodSegError naming the first bad field."""
        if self.backbone not in backbone_names():
            raise OodSegError(f'model config: backbone must be one of '
                              f'{", ".join(backbone_names())}, got {self.backbone!r}')
        if self.output_stride not in (8, 16):
            raise OodSegError(f'model config: output_stride must be 8 or 16, '
                              f'got {self.output_stride}')
        if self.n_classes < 2:
            raise OodSegError('model config: class_names needs at least two classes')
        if self.palette is not None and (len(self.palette) != self.n_classes or not all(
                len(c) == 3 and all(0 <= int(v) <= 255 for v in c) for c in self.palette)):
            raise OodSegError(f'model config: palette must be {self.n_classes} RGB triples '
                              f'0..255 (one per class)')
        if self.probe_depth < 1:
            raise OodSegError(f'model config: probe_depth must be >= 1, got {self.probe_depth}')
        h, w = self.input_size
        if h < 64 or w < 64:
            raise OodSegError(f'model config: input_size {self.input_size} must be at '
                              f'least 64 x 64')
        unknown = [n for n in self.outputs if n not in ALL_SCORES + EXTRA_OUTPUTS]
        if unknown:
            raise OodSegError(f'model config: unknown outputs {unknown}; known: '
                              f'{", ".join(ALL_SCORES)}')
        if self.sml_stats is not None:
            self._check_sml_stats()
        check_memory(self)
        return self

    def _check_sml_stats(self) -> None:
        st = self.sml_stats
        members = st.get('members') if isinstance(st, dict) else None
        if not isinstance(members, dict):
            raise OodSegError('model config: sml_stats must be an object with "members"')
        for m in SML_MEMBERS:
            entry = members.get(m)
            if not isinstance(entry, dict):
                raise OodSegError(f'model config: sml_stats has no member {m!r}')
            for key in ('mean', 'std'):
                v = entry.get(key)
                if (not isinstance(v, list) or len(v) != self.n_classes
                        or not all(isinstance(x, (int, float)) and math.isfinite(x)
                                   for x in v)):
                    raise OodSegError(f'model config: sml_stats.members.{m}.{key} must be '
                                      f'{self.n_classes} finite numbers')
            if min(entry['std']) <= 0:
                raise OodSegError(f'model config: sml_stats.members.{m}.std must be > 0')
        scores = st.get('scores', {})
        if not isinstance(scores, dict):
            raise OodSegError('model config: sml_stats.scores must be an object')
        for name, entry in scores.items():
            ok = (isinstance(entry, dict) and all(
                isinstance(entry.get(k), (int, float)) and math.isfinite(entry[k])
                for k in ('mean', 'std')))
            if not ok or entry['std'] <= 0:
                raise OodSegError(f'model config: sml_stats.scores.{name} must hold a finite '
                                  f'mean and a std > 0')

    def available_scores(self) -> List[str]:
        """
        Return every score this config offers.

        SML and fused ones only with their statistics, optional ones (deeper-layer PGN)
        only when named in ``outputs``.
        """
        have = set((self.sml_stats or {}).get('scores') or {})
        return [n for n in ALL_SCORES if (self.sml_stats is not None or not needs_sml(n))
                and (not needs_stats(n) or stat_members(n) <= have)
                and (not SCORES[n].optional or n in self.outputs)]

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        d = asdict(self)
        d['class_names'] = list(self.class_names)
        d['palette'] = [list(c) for c in self.palette] if self.palette is not None else None
        d['input_size'] = list(self.input_size)
        d['mean'] = list(self.mean)
        d['std'] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: Optional[str] = None) -> 'ModelConfig':
        """Build from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise OodSegError(f'{source or "model config"}: unknown keys {extra}')
        d = dict(d)
        for key in ('class_names', 'input_size', 'mean', 'std'):
            if key in d:
                d[key] = tuple(d[key])
        if d.get('palette') is not None:
            d['palette'] = tuple(tuple(c) for c in d['palette'])
        return cls(**d).validate()
