"""Tests of the ROS-free Pipeline: geometry, input size, settings, frame checks."""

import cv2
from model_helpers import save_tiny_bundle
import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.pipeline import Letterbox, Pipeline, PipelineSettings
import pytest

pytestmark = pytest.mark.usefixtures('torch_threads')
H, W = 96, 128


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    return save_tiny_bundle(tmp_path_factory.mktemp('bundle') / 'b', (H, W))


def test_letterbox_keeps_the_aspect():
    box = Letterbox.fit((1024, 2048), (360, 480))
    assert box.content == (240, 480) and box.padded
    assert Letterbox.fit((360, 480), (360, 480)).content == (360, 480)
    assert Letterbox.fit((720, 1280), (480, 960)).content == (480, 853)
    assert Letterbox.fit((1024, 2048), (360, 480), 'stretch').content == (360, 480)
    out = {'semantic': np.zeros((360, 480)), 'probs': np.zeros((11, 90, 120)),
           'msp': np.zeros((90, 120))}
    cropped = box.crop(out)
    assert cropped['semantic'].shape == (240, 480)
    assert cropped['probs'].shape == (11, 60, 120) and cropped['msp'].shape == (60, 120)


def test_pipeline_letterbox_matches_hand_padding(bundle):
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu', all_scores=True)
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 255, (100, 400, 3), dtype=np.uint8)      # 4:1 into 4:3
    # By hand: scale 128/400 -> 32x128 content at the top-left, mirrored below.
    small = cv2.resize(frame, (128, 32), interpolation=cv2.INTER_LINEAR)
    padded = np.pad(small, ((0, H - 32), (0, 0), (0, 0)), mode='edge')
    raw = pipe.backend.infer(padded)
    got = pipe.infer(frame)
    assert got['semantic'].shape == (32, 128)
    np.testing.assert_array_equal(got['semantic'], raw['semantic'][:32])
    np.testing.assert_allclose(got['msp'], raw['msp'][:8], rtol=0, atol=0)
    res = pipe.process(frame)
    assert res.heatmap.shape == (100, 400) and res.semantic.shape == (100, 400)
    # The stretched geometry sees a different (squashed) image.
    stretched = Pipeline.from_bundle(bundle, backend='torch', device='cpu',
                                     geometry='stretch')
    assert stretched.infer(frame)['semantic'].shape == (H, W)
    with pytest.raises(OodSegError, match='geometry'):
        Pipeline.from_bundle(bundle, backend='torch', device='cpu', geometry='crop')


def test_input_size_is_a_setting(bundle):
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu', input_size='64x128')
    assert pipe.input_size == (64, 128)
    frame = np.random.default_rng(5).integers(0, 255, (50, 100, 3), dtype=np.uint8)
    out = pipe.infer(frame)
    assert out['semantic'].shape == (64, 128) and out[pipe.score_name].shape == (16, 32)
    with pytest.raises(OodSegError, match='HxW'):
        Pipeline.from_bundle(bundle, backend='torch', device='cpu', input_size='big')


def test_from_settings_builds_what_from_bundle_builds(bundle):
    """Build the same pipeline from settings: same score, threshold and outputs."""
    frame = np.random.default_rng(6).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    direct = Pipeline.from_bundle(bundle, backend='torch', device='cpu', threshold=0.3)
    settings = PipelineSettings(bundle=str(bundle), backend='torch', device='cpu',
                                threshold=0.3)
    built = Pipeline.from_settings(settings)
    assert (built.score_name, built.threshold) == (direct.score_name, direct.threshold)
    np.testing.assert_array_equal(built.process(frame).heatmap, direct.process(frame).heatmap)
    resolved = settings.resolved()
    assert (resolved.backend, resolved.score, resolved.threshold) == \
        ('torch', direct.score_name, 0.3)


@pytest.mark.parametrize('frame, match', [
    (np.zeros((0, 10, 3), np.uint8), 'empty'),
    (np.zeros((10, 10), np.float32), 'uint8'),
])
def test_bad_frames_are_one_clear_error(bundle, frame, match):
    pipe = Pipeline.from_bundle(bundle, backend='torch', device='cpu')
    with pytest.raises(OodSegError, match=match):
        pipe.process(frame)
