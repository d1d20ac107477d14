"""Architecture and output configuration of the OoD segmentation network."""

from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional, Tuple

from ..errors import OodSegError
from ..scores import ALL_SCORES, EXTRA_OUTPUTS

CAMVID_CLASSES = ('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol',
                  'Fence', 'Car', 'Pedestrian', 'Bicyclist')


@dataclass
class ModelConfig:
    """
    Everything needed to rebuild the network (stored in the model bundle).

    ``input_size`` is (height, width) of the network input; ``mean``/``std`` normalise
    RGB in [0, 1] inside the graph. ``outputs`` lists what the graph computes besides
    ``semantic``: score maps (names from :data:`ood_seg_ros.scores.ALL_SCORES`) and
    optionally ``logits`` / ``probs`` (:data:`ood_seg_ros.scores.EXTRA_OUTPUTS`).
    """

    backbone: str = 'lite0'
    class_names: Tuple[str, ...] = CAMVID_CLASSES
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
    outputs: List[str] = field(default_factory=lambda: ['probs'] + list(ALL_SCORES))

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
        if self.backbone not in ('lite0', 'lite1', 'lite2'):
            raise OodSegError(f'model config: backbone must be lite0, lite1 or lite2, '
                              f'got {self.backbone!r}')
        if self.output_stride not in (8, 16):
            raise OodSegError(f'model config: output_stride must be 8 or 16, '
                              f'got {self.output_stride}')
        if self.n_classes < 2:
            raise OodSegError('model config: class_names needs at least two classes')
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
        return self

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        d = asdict(self)
        d['class_names'] = list(self.class_names)
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
        return cls(**d).validate()
