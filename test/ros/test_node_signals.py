"""
Signals are honoured in every phase: ONNX export, warm-up and streaming (node), export (CLI).

SIGINT and SIGTERM, each several times per phase. The node must exit with code 0 within
:data:`LIMIT_S`, the CLI with 130 / 143; an interrupted export leaves no temporary or
partial graph behind and no export process running, and no process leaves a Fast DDS
shared-memory segment behind (a node still alive at exit kept its participant's 32 MiB
in ``/dev/shm``: :mod:`dds_shm`), in every phase and for the lifecycle node too.
"""

import os
from pathlib import Path
import random
import shutil
import signal
import subprocess
import sys
import time

import dds_shm
import pytest
from repo_paths import ROOT
import ros_helpers as rh

LIMIT_S = 2.0
REPEATS = 2
SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    """Save the small test model; each export run copies it, so every run exports afresh."""
    pytest.importorskip('torch')
    return rh.make_test_bundle(tmp_path_factory.mktemp('signals') / 'b')


def _children(pid):
    """Pids of the processes whose parent is ``pid``."""
    out = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid):
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except OSError:
        return False
    return state != 'Z'


def _interrupt(cmd, sig, reached, log_path, env=None):
    """
    Start ``cmd``, send ``sig`` once ``reached(proc, log)``; (exit code, seconds, info).

    The process must leave no Fast DDS shared-memory segment behind.
    """
    before = dds_shm.segments()
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    end = time.monotonic() + 180
    info = None
    try:
        while info is None:
            assert proc.poll() is None, Path(log_path).read_text()[-3000:]
            assert time.monotonic() < end, 'phase never reached: ' + \
                Path(log_path).read_text()[-3000:]
            time.sleep(0.05)
            info = reached(proc, Path(log_path).read_text())
    except BaseException:
        proc.kill()         # never leave a node behind
        proc.wait()
        raise
    time.sleep(0.3)          # well inside the phase
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = 'still running 30 s later'
    took = time.monotonic() - t0
    if isinstance(code, int):       # it ended by itself (a SIGKILL above leaves its segment)
        left = dds_shm.left_since(before)
        assert not left, (f'{len(left)} shared-memory segment(s) left in {dds_shm.SHM_DIR}',
                          Path(log_path).read_text()[-3000:])
    return code, took, info


def _exporting(proc, log):
    """Return the pid of the export child of ``proc`` once it runs, else None."""
    kids = [p for p in _children(proc.pid)
            if b'multiprocessing' in Path(f'/proc/{p}/cmdline').read_bytes()]
    return kids[0] if kids else None


def _node_env():
    exe = rh.node_executable()
    reason = rh.netns_problem()
    if reason or exe is None:
        pytest.skip(reason or 'the ood_node console script is not installed')
    return exe, dict(os.environ, ROS_DOMAIN_ID=str(random.randrange(1, 200)))


def _node_cmd(exe, bundle, backend, *extra):
    return rh.NETNS + [exe, '--ros-args', '-p', f'model_path:={bundle}',
                       '-p', f'backend:={backend}', '-p', 'device:=cpu', '-p', 'threads:=1',
                       *extra]


def _assert_export_cleaned(bundle, child):
    time.sleep(1.0)
    assert not _alive(child), 'the export process outlived the interrupt'
    derived = Path(bundle) / 'derived'
    left = sorted(p.name for p in derived.iterdir()) if derived.exists() else []
    assert not [n for n in left if n.endswith(('.tmp', '.onnx'))], left


@pytest.mark.dds
@pytest.mark.parametrize('sig', SIGNALS, ids=lambda s: s.name)
def test_node_signal_during_onnx_export(bundle, tmp_path, sig):
    exe, env = _node_env()
    for i in range(REPEATS):
        fresh = tmp_path / f'b{i}'
        shutil.copytree(bundle, fresh)
        code, took, child = _interrupt(_node_cmd(exe, fresh, 'onnxruntime'), sig, _exporting,
                                       tmp_path / f'node{i}.log', env)
        log = (tmp_path / f'node{i}.log').read_text()
        assert code == 0 and took < LIMIT_S, (code, took, log[-3000:])
        assert 'Traceback' not in log, log[-3000:]
        _assert_export_cleaned(fresh, child)


@pytest.mark.dds
@pytest.mark.parametrize('sig', SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize('phase, marker, extra', [
    ('warmup', 'warming up', ('-p', 'warmup_runs:=1000000')),
    ('streaming', 'subscribed to', ()),
])
def test_node_signal_during_warmup_and_streaming(bundle, tmp_path, sig, phase, marker, extra):
    exe, env = _node_env()
    for i in range(REPEATS):
        code, took, _ = _interrupt(_node_cmd(exe, bundle, 'torch', *extra), sig,
                                   lambda proc, log: marker in log or None,
                                   tmp_path / f'{phase}{i}.log', env)
        log = (tmp_path / f'{phase}{i}.log').read_text()
        assert code == 0 and took < LIMIT_S, (code, took, log[-3000:])
        assert 'Traceback' not in log, log[-3000:]


@pytest.mark.dds
@pytest.mark.parametrize('sig', SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize('autostart, marker', [('true', 'subscribed to'),
                                               ('false', 'autostart false')])
def test_lifecycle_node_signal(bundle, tmp_path, sig, autostart, marker):
    # rclpy's LifecycleNode.destroy_node keeps the state machine, which holds the node
    exe, env = _node_env()
    code, took, _ = _interrupt(
        _node_cmd(exe, bundle, 'torch', '-p', 'lifecycle:=true', '-p', f'autostart:={autostart}'),
        sig, lambda proc, log: marker in log or None, tmp_path / 'node.log', env)
    log = (tmp_path / 'node.log').read_text()
    assert code == 0 and took < LIMIT_S, (code, took, log[-3000:])
    assert 'Traceback' not in log, log[-3000:]


@pytest.mark.parametrize('sig, status', [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=['SIGINT', 'SIGTERM'])
def test_bag_eval_signal_during_onnx_export(bundle, tmp_path, sig, status):
    for i in range(REPEATS):
        fresh = tmp_path / f'b{i}'
        shutil.copytree(bundle, fresh)
        out = tmp_path / f'out{i}'
        cmd = [sys.executable, '-m', 'ood_seg_ros.cli', 'bag-eval',
               str(ROOT / 'test' / 'data' / 'sample.bag'), '--bundle', str(fresh),
               '--backend', 'onnxruntime', '--device', 'cpu', '--out', str(out)]
        code, took, child = _interrupt(cmd, sig, _exporting, tmp_path / f'cli{i}.log')
        log = (tmp_path / f'cli{i}.log').read_text()
        assert code == status and took < LIMIT_S, (code, took, log[-3000:])
        assert 'Traceback' not in log, log[-3000:]
        _assert_export_cleaned(fresh, child)
