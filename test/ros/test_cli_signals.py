"""SIGTERM on an ``ood-seg`` command unwinds like Ctrl-C: an output bag stays readable."""

from pathlib import Path
import signal
import subprocess
import sys
import time

from ood_seg_ros.tools.data import bags

SCRIPT = r"""
import sys, time
import numpy as np
from ood_seg_ros import cli
from ood_seg_ros.tools.commands.base import Command
from ood_seg_ros.tools.data import bags

def run(args):
    with bags.BagWriter(args.out) as bag:      # as bag-eval writes its output bag
        bag.add_topic('/cam/image', bags.IMAGE_TYPE)
        img = np.zeros((8, 8, 3), np.uint8)
        for i in range(3):
            bag.write('/cam/image', 1000 + i, bags.image_cdr(img, 'rgb8', 1000 + i, 'cam'))
        print('WRITING', flush=True)
        time.sleep(60)                          # a long run, then SIGTERM/SIGINT
    return 0

class SlowCommand(Command):
    '''Write a bag slowly.'''

    def add_arguments(self, parser):
        parser.add_argument('--out')

    def main(self, args):
        return run(args)

sys.exit(cli.main(['slow', '--out', sys.argv[1]], commands=[SlowCommand()]))
"""


def _interrupt(tmp_path, sig):
    out = tmp_path / f'bag_{sig.name}'
    proc = subprocess.Popen([sys.executable, '-c', SCRIPT, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == 'WRITING', proc.stderr.read()
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err, out


def test_sigterm_finalises_the_output_bag(tmp_path):
    code, err, out = _interrupt(tmp_path, signal.SIGTERM)
    assert code == 143 and 'terminated' in err and 'Traceback' not in err
    assert (Path(out) / 'metadata.yaml').exists()
    assert len(list(bags.read_image_bag(out))) == 3


def test_sigint_finalises_the_output_bag(tmp_path):
    code, err, out = _interrupt(tmp_path, signal.SIGINT)
    assert code == 130 and 'interrupted' in err
    assert len(list(bags.read_image_bag(out))) == 3
