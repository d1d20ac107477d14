"""Packaging: package.xml is valid, versions agree, colcon builds the real ROS layout."""

import ast
from pathlib import Path
import shutil
import subprocess
import sys

from catkin_pkg.package import parse_package
import pytest
from repo_paths import ROOT

BIN = Path(sys.executable).parent
# rosdep keys package.xml may use, written down from ros/rosdistro (the test does not
# fetch it). ROS packages released in jazzy/distribution.yaml: rclpy, rcl_interfaces,
# common_interfaces (sensor_msgs, std_msgs, diagnostic_msgs, std_srvs), lifecycle_msgs,
# vision_msgs, ament_index, launch, launch_ros, ament_lint (ament_flake8, ament_pep257).
ROS_PACKAGE_KEYS = {'rclpy', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'lifecycle_msgs',
                    'rcl_interfaces', 'std_srvs', 'vision_msgs', 'ament_index_python',
                    'launch', 'launch_ros', 'ament_flake8', 'ament_pep257'}
# System keys from rosdep/python.yaml.
ROSDEP_PYTHON_KEYS = {'python3-numpy', 'python3-scipy', 'python3-opencv', 'python3-yaml',
                      'python3-tqdm', 'python3-sklearn', 'python3-matplotlib',
                      'python3-pydantic', 'python3-pytest'}
# Third-party modules the package imports: the rosdep key that provides each, or None
# for the ones requirements.txt installs with pip (see the README) or that come from
# the platform (TensorRT: JetPack / NVIDIA).
IMPORT_SOURCES = {
    'ament_index_python': 'ament_index_python', 'diagnostic_msgs': 'diagnostic_msgs',
    'rcl_interfaces': 'rcl_interfaces', 'rclpy': 'rclpy', 'sensor_msgs': 'sensor_msgs',
    'std_msgs': 'std_msgs', 'vision_msgs': 'vision_msgs', 'cv2': 'python3-opencv',
    'matplotlib': 'python3-matplotlib', 'numpy': 'python3-numpy',
    'pydantic': 'python3-pydantic', 'scipy': 'python3-scipy', 'sklearn': 'python3-sklearn',
    'tqdm': 'python3-tqdm', 'yaml': 'python3-yaml',
    'onnx': None, 'onnxruntime': None, 'rosbags': None, 'torch': None, 'tensorrt': None,
    'ray': None}   # ray: the optional fleet extra (pip install ood_seg_ros[fleet])
# pip names of the modules only the offline tools import (setup.py extras, requirements.txt)
TOOL_PIP_NAMES = {'sklearn': 'scikit-learn', 'matplotlib': 'matplotlib', 'tqdm': 'tqdm',
                  'rosbags': 'rosbags', 'ray': 'ray'}


def _setup_py_version() -> str:
    tree = ast.parse((ROOT / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == 'version':
            return node.value.value
    raise AssertionError('setup.py has no version=')


def test_package_xml_is_valid_format3_ament_python():
    pkg = parse_package(str(ROOT / 'package.xml'))
    pkg.validate()
    assert pkg.package_format == 3
    assert pkg.name == 'ood_seg_ros'
    assert pkg.get_build_type() == 'ament_python'
    exec_deps = {d.name for d in pkg.exec_depends}
    for dep in ('rclpy', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'vision_msgs',
                'launch', 'launch_ros', 'ament_index_python'):
        assert dep in exec_deps, dep


def test_every_dependency_is_a_known_rosdep_key():
    """``rosdep install --from-paths . -y`` must resolve: no invented ``*-pip`` keys."""
    pkg = parse_package(str(ROOT / 'package.xml'))
    deps = {d.name for d in pkg.build_depends + pkg.buildtool_depends + pkg.exec_depends +
            pkg.test_depends + pkg.build_export_depends}
    unknown = deps - ROS_PACKAGE_KEYS - ROSDEP_PYTHON_KEYS
    assert not unknown, f'not checked rosdep keys: {sorted(unknown)}'
    # rosdep's pip key pulls CUDA torch + torchvision; torch comes from requirements.txt
    assert 'python3-pytorch-pip' not in deps
    requirements = (ROOT / 'requirements.txt').read_text()
    for pip_only in ('torch==', 'onnx>=', 'onnxruntime>=', 'rosbags>=', 'efficientnet-lite0'):
        assert pip_only in requirements, pip_only
    readme = (ROOT / 'README.md').read_text()
    assert 'rosdep install --from-paths . -y' in readme and 'requirements.txt' in readme


def test_setup_py_has_no_unknown_options():
    proc = subprocess.run([sys.executable, 'setup.py', '--name'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == 'ood_seg_ros'
    assert 'Unknown distribution option' not in proc.stderr, proc.stderr


def test_versions_agree():
    import ood_seg_ros
    pkg = parse_package(str(ROOT / 'package.xml'))
    assert pkg.version == _setup_py_version() == ood_seg_ros.__version__


def test_console_scripts_are_installed_in_the_venv():
    for name in ('ood-seg', 'ood_node'):
        assert (BIN / name).exists(), f'{name} missing next to {sys.executable}'


def test_ood_seg_help_lists_every_subcommand():
    out = subprocess.run([str(BIN / 'ood-seg'), '--help'], capture_output=True, text=True,
                         check=True).stdout
    for cmd in ('bench', 'train-base', 'train-probes', 'train-entropy', 'train-meta',
                'eval', 'export', 'make-ood-set', 'make-bag', 'bag-eval', 'recipe'):
        assert cmd in out, cmd


def test_colcon_build_installs_the_ros_layout(tmp_path):
    colcon = BIN / 'colcon'
    if not colcon.exists():
        pytest.skip('colcon is not installed in this environment')
    proc = subprocess.run(
        [str(colcon), '--log-base', str(tmp_path / 'log'), 'build', '--paths', str(ROOT),
         '--build-base', str(tmp_path / 'build'), '--install-base', str(tmp_path / 'install')],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    inst = tmp_path / 'install' / 'ood_seg_ros'
    assert (inst / 'lib' / 'ood_seg_ros' / 'ood_node').exists()
    assert (inst / 'lib' / 'ood_seg_ros' / 'ood-seg').exists()
    share = inst / 'share' / 'ood_seg_ros'
    assert (share / 'package.xml').exists()
    assert (share / 'launch' / 'ood.launch.py').exists()
    assert (share / 'config' / 'ood.yaml').exists()
    assert (share / 'config' / 'fastdds.xml').exists()
    # colcon-bash: the workspace can be sourced
    assert (tmp_path / 'install' / 'setup.bash').exists()
    assert (inst / 'share' / 'ood_seg_ros' / 'package.bash').exists()
    assert (inst / 'share' / 'ament_index' / 'resource_index' / 'packages' /
            'ood_seg_ros').exists()
    bundle = ROOT / 'models' / 'camvid_lite0'
    if bundle.exists():
        for f in bundle.iterdir():
            if f.is_file():
                assert (share / 'models' / 'camvid_lite0' / f.name).exists(), f.name
    shutil.rmtree(tmp_path / 'build', ignore_errors=True)


def test_editable_install_imports_from_this_checkout():
    import ood_seg_ros
    assert Path(ood_seg_ros.__file__).resolve().parent == ROOT / 'ood_seg_ros'


def _is_tool(path: Path) -> bool:
    rel = path.relative_to(ROOT / 'ood_seg_ros').parts
    return rel[0] == 'tools' or rel == ('cli.py',)


def _third_party_imports(side: str = 'all'):
    found = set()
    for path in (ROOT / 'ood_seg_ros').rglob('*.py'):
        if side != 'all' and _is_tool(path) != (side == 'tools'):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split('.')[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split('.')[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != 'ood_seg_ros'}


def test_every_imported_module_is_declared():
    """Check each imported module has its rosdep key in package.xml (or a pip line)."""
    pkg = parse_package(str(ROOT / 'package.xml'))
    declared = {d.name for d in pkg.exec_depends}
    imported = _third_party_imports()
    assert imported <= set(IMPORT_SOURCES), sorted(imported - set(IMPORT_SOURCES))
    node = _third_party_imports('node')
    missing = {m: IMPORT_SOURCES[m] for m in node
               if IMPORT_SOURCES[m] is not None and IMPORT_SOURCES[m] not in declared}
    assert not missing, f'the node imports them but package.xml lacks: {missing}'
    pip = (ROOT / 'requirements.txt').read_text()
    for module, name in (('pydantic', 'pydantic'), ('onnx', 'onnx'), ('rosbags', 'rosbags'),
                         ('onnxruntime', 'onnxruntime'), ('ray', 'ray')):
        assert f'\n{name}' in pip, f'{module} is not in requirements.txt'


def test_the_nodes_python_exec_depends_are_exactly_what_it_imports():
    """A robot installs no tool's package: package.xml's python3-* keys = the node's."""
    pkg = parse_package(str(ROOT / 'package.xml'))
    declared = {d.name for d in pkg.exec_depends if d.name.startswith('python3-')}
    node = _third_party_imports('node')
    wanted = {IMPORT_SOURCES[m] for m in node
              if (IMPORT_SOURCES[m] or '').startswith('python3-')}
    assert declared == wanted
    assert 'sklearn' not in node and 'tqdm' not in node and 'matplotlib' not in node


def test_the_tools_extra_packages_are_pip_extras():
    """What only the tools import is in requirements.txt and a setup.py extra."""
    tree = ast.parse((ROOT / 'setup.py').read_text())
    names = {n.targets[0].id: n.value for n in tree.body if isinstance(n, ast.Assign)}
    spec = next(k.value for k in ast.walk(tree)
                if isinstance(k, ast.keyword) and k.arg == 'extras_require')
    extras = {}
    for key, value in zip(spec.keys, spec.values):
        value = names.get(getattr(value, 'id', None), value)
        extras[key.value] = [e.value for e in value.elts]
    tool_only = _third_party_imports('tools') - _third_party_imports('node')
    assert tool_only == set(TOOL_PIP_NAMES), tool_only
    pip = (ROOT / 'requirements.txt').read_text()
    listed = {e.split('>')[0].split('=')[0] for e in extras['tools'] + extras['fleet']}
    for module in tool_only:
        assert f'\n{TOOL_PIP_NAMES[module]}' in pip, module
        assert TOOL_PIP_NAMES[module] in listed, module
    readme = (ROOT / 'README.md').read_text()
    assert 'ood_seg_ros[tools]' in readme
