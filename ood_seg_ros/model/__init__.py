"""Network definitions: EfficientNet-Lite backbone, DeepLabv3+, MOoSe probes, bundle."""

from .bundle import build_model, Bundle, load_bundle, LoadedBundle, save_bundle
from .config import ModelConfig
from .deeplab import OodSegNet

__all__ = ['Bundle', 'build_model', 'load_bundle', 'LoadedBundle', 'save_bundle',
           'ModelConfig', 'OodSegNet']
