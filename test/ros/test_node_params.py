"""Node parameters without a ROS graph: start-up values, settings mapping, set / post-set."""

from ood_seg_ros.errors import OodSegError
from ood_seg_ros.pipeline import PipelineSettings
import pytest
from repo_paths import ROOT

params = pytest.importorskip('ood_seg_ros.ros.params')
Parameter = pytest.importorskip('rclpy.parameter').Parameter


def test_startup_parameters_from_command_line_and_params_files(tmp_path):
    start = params.startup_parameters
    assert start(['ood_node']) == {'lifecycle': False, 'autostart': True,
                                   'exit_on_error': False}
    assert start(['x', '--ros-args', '-p', 'lifecycle:=true'])['lifecycle'] is True
    assert start(['x', '-p', 'lifecycle:=true'])['lifecycle'] is False    # not a ROS arg
    wild = tmp_path / 'wild.yaml'
    wild.write_text('/**:\n  ros__parameters:\n    lifecycle: true\n    autostart: false\n')
    mine = tmp_path / 'mine.yaml'
    mine.write_text('/left/ood_node:\n  ros__parameters:\n    exit_on_error: true\n'
                    'other_node:\n  ros__parameters:\n    lifecycle: false\n')
    nested = tmp_path / 'nested.yaml'
    nested.write_text('left:\n  ood_node:\n    ros__parameters:\n      autostart: true\n')
    got = start(['x', '--ros-args', '-r', '__ns:=/left', '--params-file', str(wild),
                 '--params-file', str(mine)])
    assert got == {'lifecycle': True, 'autostart': False, 'exit_on_error': True}
    assert start(['x', '--ros-args', '--params-file', str(mine)])['exit_on_error'] is False
    got = start(['x', '--ros-args', '--params-file', str(wild), '-r', '__ns:=/left',
                 '--params-file', str(nested), '-p', 'lifecycle:=false'])
    assert got == {'lifecycle': False, 'autostart': True, 'exit_on_error': False}
    assert start(['x', '--ros-args', '-r', '__node:=front', '-p', 'autostart:=false',
                  '--params-file', str(mine)])['autostart'] is False
    with pytest.raises(OodSegError, match='lifecycle'):
        start(['x', '--ros-args', '-p', 'lifecycle:=maybe'])
    # the package's parameters file is read as the node reads it
    ood = start(['x', '--ros-args', '--params-file', str(ROOT / 'config' / 'ood.yaml')])
    assert ood == {n: params.PARAMETERS[n][0] for n in params.STARTUP}


def test_settings_of_the_parameter_defaults_and_back():
    cfg = {name: spec[0] for name, spec in params.PARAMETERS.items()}
    cfg.update(model_path='/b', backend='torch', threads=2, segment_threshold=0.3,
               input_size='480x960')
    s = params.pipeline_settings(cfg, None)
    assert s == PipelineSettings(bundle='/b', backend='torch', threshold=0.3,
                                 input_size='480x960', cuda_graphs=True, threads=2)
    assert s.backend_options() == {'cuda_graphs': True, 'threads': 2}
    assert params.pipeline_settings(cfg, 'msp').score == 'msp'
    assert params.node_parameters(s) == {'model_path': '/b', 'backend': 'torch',
                                         'device': 'auto', 'heatmap_score': '',
                                         'segment_threshold': 0.3}
    con = params.pipeline_settings(dict(cfg, small_object_contrast=0.5, contrast_window=5),
                                   None)
    assert (con.contrast, con.contrast_window) == (0.5, 5)
    assert params.node_parameters(con, ('contrast', 'contrast_window')) == \
        {'small_object_contrast': 0.5, 'contrast_window': 5}
    assert params.node_parameters(s, ('contrast', 'contrast_window')) == \
        {'small_object_contrast': -1.0, 'contrast_window': 0}      # the bundle's
    off = params.pipeline_settings(dict(cfg, small_object_contrast=0.0), None)
    assert off.contrast == 0.0                                      # off, not the bundle's
    for name, bad, words in (('small_object_contrast', -0.1, r"-1 \(the bundle's\) or"),
                             ('contrast_window', 4, 'odd integer >= 3')):
        with pytest.raises(OodSegError, match=words):
            params.validate(name, bad)
    trt = PipelineSettings('/b', backend='tensorrt', engine_path='/e.plan')
    assert trt.backend_options() == {'engine_path': '/e.plan'}
    assert PipelineSettings('/b', backend='onnxruntime', threads=3).backend_options() == \
        {'threads': 3}


def test_precision_parameter_maps_onto_the_backends():
    cfg = {name: spec[0] for name, spec in params.PARAMETERS.items()}
    cfg.update(model_path='/b', backend='onnxruntime', threads=1, precision='int8')
    s = params.pipeline_settings(cfg, None)
    assert s.precision_name() == 'int8'
    assert s.backend_options() == {'threads': 1, 'int8': True}
    trt = PipelineSettings('/b', backend='tensorrt', precision='int8')
    assert trt.backend_options() == {'int8': True}
    assert PipelineSettings('/b', fp16=True).precision_name() == 'fp16'
    assert PipelineSettings('/b').precision_name() == 'fp32'
    with pytest.raises(OodSegError, match='not torch'):
        PipelineSettings('/b', backend='torch', precision='int8').backend_options()
    with pytest.raises(OodSegError, match='fp16 is true but precision is int8'):
        params.pipeline_settings(dict(cfg, fp16=True), None)
    with pytest.raises(OodSegError, match='precision'):
        params.validate('precision', 'int4')


def test_resolved_settings_read_the_bundle():
    bundle = ROOT / 'models' / 'camvid_lite0'
    if not (bundle / 'bundle.json').exists():
        pytest.skip('the default bundle is not in this checkout')
    import json
    runtime = json.loads((bundle / 'bundle.json').read_text())['runtime']
    s = PipelineSettings(str(bundle), backend='torch', device='cpu').resolved()
    assert (s.backend, s.score) == ('torch', runtime['heatmap_score'])
    assert s.threshold == pytest.approx(runtime['segment_threshold'])
    assert s.region == runtime.get('heatmap_region', 'all')     # '' -> the bundle's mode
    assert PipelineSettings(str(bundle), backend='torch', region='all').resolved().region \
        == 'all'
    given = PipelineSettings(str(bundle), backend='torch', score='msp', threshold=0.2)
    assert (given.resolved().score, given.resolved().threshold) == ('msp', 0.2)


class _Backend:
    output_names = ('probs', 'msp', 'moose_entropy')


class _Pipe:
    """Stand-in with the Pipeline attributes the parameter steps use."""

    def __init__(self, score='moose_entropy', threshold=0.5):
        self.backend = _Backend()
        self.runtime = {'heatmap_score': 'moose_entropy', 'segment_threshold': 0.7}
        self.score_name, self.threshold = score, threshold
        self.default_region = 'drivable'

    def score_normalisation(self, name, computed=True):
        if computed and name not in self.backend.output_names:
            raise OodSegError(f'{name} not computed')
        if name in ('msp', 'energy'):
            return 0.0, 1.0
        raise OodSegError(f'no normalisation for {name}')

    def set_score(self, name):
        self.score_normalisation(name)
        self.score_name = name

    def set_threshold(self, value):
        self.threshold = value


def test_set_validates_and_post_set_applies():
    pipe = _Pipe()
    reset = params.with_bundle_defaults([Parameter('segment_threshold', value=0.0),
                                         Parameter('heatmap_score', value=''),
                                         Parameter('heatmap_region', value='')], pipe)
    assert [(q.name, q.value) for q in reset] == [('segment_threshold', 0.7),
                                                  ('heatmap_score', 'moose_entropy'),
                                                  ('heatmap_region', 'drivable')]
    params.validate('heatmap_region', '')
    with pytest.raises(OodSegError, match='heatmap_region'):
        params.validate('heatmap_region', 'road')
    with pytest.raises(OodSegError, match='segment_threshold'):
        params.check_set([Parameter('segment_threshold', value=1.5)], pipe)
    with pytest.raises(OodSegError, match='no normalisation'):
        params.check_set([Parameter('heatmap_score', value='moose_entropy')], _Pipe('msp'))
    assert pipe.threshold == 0.5 and pipe.score_name == 'moose_entropy'   # nothing applied
    assert params.check_set([Parameter('heatmap_score', value='msp')], pipe) is None
    cfg = {'heatmap_score': 'moose_entropy', 'segment_threshold': 0.5}
    params.apply_set(cfg, [Parameter('heatmap_score', value='msp'),
                           Parameter('segment_threshold', value=0.25)], pipe)
    assert (pipe.score_name, pipe.threshold) == ('msp', 0.25)
    assert cfg == {'heatmap_score': 'msp', 'segment_threshold': 0.25}


def test_a_score_the_graph_lacks_asks_for_a_rebuild_and_builds_nothing_in_the_call():
    pipe = _Pipe()
    # not computed by the running backend, but with a normalisation: a background rebuild
    assert params.check_set([Parameter('heatmap_score', value='energy')], pipe) == 'energy'
    with pytest.raises(OodSegError, match='no normalisation'):
        params.check_set([Parameter('heatmap_score', value='max_logit')], pipe)
    cfg = {'heatmap_score': 'moose_entropy', 'segment_threshold': 0.5}
    params.apply_set(cfg, [Parameter('heatmap_score', value='energy'),
                           Parameter('segment_threshold', value=0.3)], pipe, 'energy')
    # the running pipeline keeps its score until the rebuilt one takes over
    assert (pipe.score_name, pipe.threshold) == ('moose_entropy', 0.3)
    assert cfg == {'heatmap_score': 'energy', 'segment_threshold': 0.3}
    params.apply_set(cfg, [Parameter('segment_threshold', value=0.4)], pipe)
    assert (pipe.score_name, pipe.threshold) == ('moose_entropy', 0.4)
