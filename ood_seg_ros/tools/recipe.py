"""
``ood-seg recipe``: the clean protocol end to end, from a labelled dataset to a bundle.

Stages (each one ``ood-seg`` subcommand, run in this process, its outputs in its own folder
of the work directory ``<out>.work``):

    base       train-base on the train split (skipped with --init-bundle)
    probes     train-probes on the frozen base (cached features on a CPU)
    proxy      make-ood-set, train split, COCO group a       (--entropy only)
    entropy    train-entropy on the proxy                      (--entropy only)
    sml        sml-stats on the train split
    ood_val    make-ood-set, val split, COCO group b           (with --coco)
    road_val   make-ood-set --placement road, val split        (with --coco; selection only)
    calibrate  eval --calibrate on the validation sets, at every --input-size
    meta       train-meta on the validation sets (threshold: --meta-threshold)
    export     ONNX graphs at every --input-size
    card       in-distribution figures (test split when present, else val) and the
               validation sets' OoD figures: MODEL_CARD.md, figures/

The bundle of the last stage is copied to ``--out`` with ``MODEL_CARD.md``; the node loads
it with ``model:=<out>``. A stage is skipped when its folder records the same key: the
SHA-256 of its options, the content of the bundle it starts from and a fingerprint of the
data it reads (file names and sizes of the splits, the class file). Changing an option
reruns that stage and every stage after it.
"""

import argparse
from dataclasses import asdict, dataclass, field
import hashlib
import json
from pathlib import Path
import shutil
import sys
import time
from typing import Callable, List, Optional

from .model_card import STATE
from ..errors import OodSegError
from ..model.bundle import BUNDLE_JSON, META_JSON, WEIGHTS

BUNDLE_FILES = (BUNDLE_JSON, WEIGHTS, META_JSON)
# The meta classifier's threshold rules (train-meta --balanced / --max-fp-per-frame).
META_THRESHOLDS = ('balanced', 'fp-rate')


@dataclass
class RecipeOptions:
    """Everything a recipe run depends on (the stage keys are made from these)."""

    dataset: str
    ood_val: List[str]
    out: str
    work: str = ''
    init_bundle: str = ''
    coco: str = ''
    coco_map: str = ''
    entropy: bool = False
    input_sizes: List[str] = field(default_factory=lambda: ['360x480'])
    device: str = 'auto'
    train_split: str = 'train'
    val_split: str = 'val'
    test_split: str = 'test'
    backbone: str = 'lite0'
    imagenet: bool = True
    base_epochs: int = 200
    base_minutes: float = 0.0
    probe_epochs: int = 60
    entropy_epochs: int = 4
    batch_size: int = 16
    crop: str = ''
    max_steps: int = 0
    subset: int = 0
    limit: int = 0
    meta_threshold: str = 'balanced'
    max_fp_per_frame: float = 0.0
    seed: int = 0


@dataclass
class Stage:
    """One step: its name, the subcommand lines it runs, what it starts from and reads."""

    name: str
    argv: List[List[str]]
    bundle_in: str = ''                 # bundle copied into the stage folder first
    reads: List[str] = field(default_factory=list)   # data folders it reads
    after: Optional[Callable] = None    # run after the commands (the model card)


def _fingerprint(path: Path, h) -> None:
    """Feed the file names and sizes under ``path`` (a file: its content) into ``h``."""
    path = Path(path)
    if path.is_file():
        h.update(path.read_bytes() if path.stat().st_size < 2 ** 20 else
                 str(path.stat().st_size).encode())
        return
    for p in sorted(path.rglob('*')):
        if p.is_file():
            h.update(f'{p.relative_to(path)}:{p.stat().st_size}\n'.encode())


def bundle_hash(path: Path, h) -> None:
    """Feed the content of a bundle's files into ``h``."""
    for name in BUNDLE_FILES:
        p = Path(path) / name
        if p.is_file():
            h.update(name.encode() + hashlib.sha256(p.read_bytes()).digest())


class Recipe:
    """Plan and run the stages of :class:`RecipeOptions`; ``run()`` returns the bundle path."""

    def __init__(self, opts: RecipeOptions, log=print):
        """Check the options and open the dataset (its splits are checked up front)."""
        from .data.datasets import open_dataset
        from ..model.config import parse_size
        self.o, self.log = opts, log
        self.ds = open_dataset(opts.dataset)
        self.out = Path(opts.out)
        self.work = Path(opts.work) if opts.work else self.out.with_name(self.out.name + '.work')
        if not opts.ood_val and not opts.coco:
            raise OodSegError('the recipe needs validation anomaly sets: --ood-val DIR '
                              '(repeatable) and/or --coco DIR (pasted into the val split)')
        if opts.entropy and not opts.coco:
            raise OodSegError('--entropy needs --coco (the OoD proxy is pasted COCO objects)')
        if self.o.meta_threshold not in META_THRESHOLDS:
            raise OodSegError(f'--meta-threshold must be one of {", ".join(META_THRESHOLDS)}, '
                              f'got {self.o.meta_threshold!r}')
        if self.o.max_fp_per_frame < 0 or (self.o.meta_threshold == 'fp-rate'
                                           and not self.o.max_fp_per_frame > 0):
            raise OodSegError(f'--max-fp-per-frame must be > 0 with --meta-threshold fp-rate '
                              f'(>= 0 with balanced), got {self.o.max_fp_per_frame:g}')
        for d in opts.ood_val:
            if not Path(d).is_dir():
                raise OodSegError(f'validation set {d} does not exist')
        self.sizes = [parse_size(s) for s in opts.input_sizes] or [(360, 480)]
        splits = self.ds.splits()
        for s in (opts.train_split, opts.val_split):
            if s not in splits:
                raise OodSegError(f'{self.ds.kind} dataset {self.ds.root}: no split {s!r} '
                                  f'(splits: {", ".join(splits) or "none"})')
        self.report_split = opts.test_split if opts.test_split in splits else opts.val_split
        from .protocol import check_held_out     # refuse now, not after hours of training
        check_held_out({'trained_data': {self.ds.identity: [opts.train_split]}},
                       opts.ood_val, 'calibrate')
        if opts.init_bundle:
            self._check_init_bundle()

    def _check_init_bundle(self) -> None:
        """Refuse an init bundle whose classes are not the dataset's."""
        from ..model.bundle import read_bundle_json
        names = read_bundle_json(self.o.init_bundle)['config'].get('class_names')
        if tuple(names or ()) != self.ds.classes.names:
            raise OodSegError(f'--init-bundle {self.o.init_bundle} has classes {names} but '
                              f'dataset {self.ds.identity} has {list(self.ds.classes.names)}')

    # -- the plan ---------------------------------------------------------------------
    def _common(self, stage: str) -> List[str]:
        o = self.o
        argv = ['--dataset', f'{self.ds.kind}:{self.ds.root}', '--train-splits', o.train_split,
                '--val-split', o.val_split, '--batch-size', str(o.batch_size),
                '--device', o.device, '--seed', str(o.seed), '--out', str(self.work / stage)]
        h, w = self.sizes[0]
        argv += ['--crop', o.crop or f'{h},{w}']
        if o.max_steps:
            argv += ['--max-steps', str(o.max_steps)]
        if o.subset:
            argv += ['--subset', str(o.subset)]
        return argv

    def _bundle(self, stage: str) -> str:
        return str(self.work / stage / 'bundle')

    def _val_sets(self) -> List[str]:
        sets = [str(Path(d)) for d in self.o.ood_val]
        return sets + ([str(self.work / 'ood_val')] if self.o.coco else [])

    def plan(self) -> List[Stage]:
        """Return the stages to run, in order."""
        o, spec = self.o, f'{self.ds.kind}:{self.ds.root}'
        data = [str(self.ds.root)]
        size0 = '{}x{}'.format(*self.sizes[0])
        lim = ['--limit', str(o.limit)] if o.limit else []
        stages = []
        if o.init_bundle:
            base = str(Path(o.init_bundle))
        else:
            argv = ['train-base', *self._common('base'), '--epochs', str(o.base_epochs),
                    '--backbone', o.backbone, '--input-size', size0,
                    '--class-weights', 'sqrt_median_freq']
            if o.base_minutes:
                argv += ['--time-limit', str(o.base_minutes)]
            if not o.imagenet:
                argv.append('--no-imagenet')
            stages.append(Stage('base', [argv], reads=data))
            base = self._bundle('base')
        probes = ['train-probes', *self._common('probes'), '--init-bundle', base,
                  '--epochs', str(o.probe_epochs), '--class-weights', 'sqrt_median_freq']
        if o.device in ('cpu', 'auto') and not _cuda(o.device):
            probes.append('--cache-features')
        stages.append(Stage('probes', [probes], reads=data + [base]))
        last = self._bundle('probes')
        coco_map = ['--coco-map', o.coco_map] if o.coco_map else []
        if o.entropy:
            stages.append(Stage('proxy', [[
                'make-ood-set', '--dataset', spec, '--coco', o.coco, '--split', o.train_split,
                '--group', 'a', '--seed', '1', '--overwrite', '--out', str(self.work / 'proxy'),
                *coco_map, *lim]], reads=data + [o.coco]))
            stages.append(Stage('entropy', [[
                'train-entropy', *self._common('entropy'), '--init-bundle', last,
                '--ood-proxy', str(self.work / 'proxy'), '--epochs', str(o.entropy_epochs)]],
                reads=data + [last, str(self.work / 'proxy')]))
            last = self._bundle('entropy')
        stages.append(Stage('sml', [[
            'sml-stats', '--bundle', self._bundle('sml'), '--dataset', spec, '--split',
            o.train_split, '--device', _eval_device(o.device), *lim]],
            bundle_in=last, reads=data))
        last = self._bundle('sml')
        if o.coco:
            stages.append(Stage('ood_val', [[
                'make-ood-set', '--dataset', spec, '--coco', o.coco, '--split', o.val_split,
                '--group', 'b', '--seed', '2', '--overwrite', '--out', str(self.work / 'ood_val'),
                *coco_map, *lim]], reads=data + [o.coco]))
            # Road obstacles on the val frames: the anomaly type a scene-paste set lacks,
            # joining only the choice of the heatmap score (a synthetic proxy).
            stages.append(Stage('road_val', [[
                'make-ood-set', '--dataset', spec, '--coco', o.coco, '--split', o.val_split,
                '--group', 'b', '--seed', '5', '--placement', 'road', '--objects', '2,5',
                '--overwrite', '--out', str(self.work / 'road_val'), *coco_map, *lim]],
                reads=data + [o.coco]))
        sets = [a for s in self._val_sets() for a in ('--ood-set', s)]
        select = ['--select-set', str(self.work / 'road_val')] if o.coco else []
        dev = ['--device', _eval_device(o.device)]
        calib = [['eval', '--bundle', self._bundle('calibrate'), *sets, *select, '--calibrate',
                  *dev, '--input-size', '{}x{}'.format(*size), *lim] for size in self.sizes]
        stages.append(Stage('calibrate', calib, bundle_in=last, reads=self._val_sets()))
        rule = (['--balanced'] if o.meta_threshold == 'balanced' else []) + (
            ['--max-fp-per-frame', str(o.max_fp_per_frame)] if o.max_fp_per_frame else [])
        stages.append(Stage('meta', [[
            'train-meta', '--bundle', self._bundle('meta'), *sets, *rule, *dev, *lim]],
            bundle_in=self._bundle('calibrate'),
            reads=self._val_sets()))
        export = [['export', '--bundle', self._bundle('export'), '--format', 'onnx',
                   '--height', str(h), '--width', str(w)] for h, w in self.sizes]
        stages.append(Stage('export', export, bundle_in=self._bundle('meta')))
        stages.append(Stage('card', [], bundle_in=self._bundle('export'),
                            reads=data + self._val_sets(), after=self._card))
        return stages

    # -- running ----------------------------------------------------------------------
    def key(self, stage: Stage) -> str:
        """SHA-256 of a stage's commands, the bundle it starts from and the data it reads."""
        h = hashlib.sha256(json.dumps({'name': stage.name, 'argv': stage.argv,
                                       'options': asdict(self.o) if stage.after else None},
                                      sort_keys=True).encode())
        if stage.bundle_in:
            bundle_hash(Path(stage.bundle_in), h)
        for path in stage.reads:
            p = Path(path)
            if (p / BUNDLE_JSON).is_file():
                bundle_hash(p, h)
            elif p == self.ds.root:
                self._data_fingerprint(h)
            elif p.exists():
                _fingerprint(p, h)
        return h.hexdigest()

    def _data_fingerprint(self, h) -> None:
        for split in (self.o.train_split, self.o.val_split, self.report_split):
            for img, lab in self.ds.list_pairs(split):
                for p in (img, lab):
                    h.update(f'{p.relative_to(self.ds.root)}:{p.stat().st_size}\n'.encode())
        for name in ('classes.yaml',):
            if (self.ds.root / name).is_file():
                h.update((self.ds.root / name).read_bytes())

    def run(self) -> Path:
        """Run every stage not yet done for the same inputs; ship the bundle; return it."""
        from tqdm import tqdm
        parser = stage_parser()
        for split in (self.o.train_split, self.o.val_split):
            self.ds.check_split(split, self.o.subset)   # bad data: refused before any work
        self.work.mkdir(parents=True, exist_ok=True)
        plan = self.plan()
        bar = tqdm(plan, desc='recipe', unit='stage', file=sys.stderr, disable=None)
        timings = {}
        for stage in bar:
            bar.set_description(f'recipe: {stage.name}')
            folder, key = self.work / stage.name, self.key(stage)
            state = folder / STATE
            record = json.loads(state.read_text()) if state.is_file() else {}
            if record.get('key') == key:
                self.log(f'[recipe] {stage.name}: done for these inputs, skipped')
                continue
            t0 = time.time()
            expect = (f', expected about {record["seconds"]:.0f} s (its last run)'
                      if record.get('seconds') else '')
            self.log(f'[recipe] {stage.name}: running ({len(stage.argv)} command(s)){expect}')
            if folder.exists():
                shutil.rmtree(folder)
            if stage.bundle_in:
                _copy_bundle(Path(stage.bundle_in), folder / 'bundle')
            for argv in stage.argv:
                args = parser.parse_args(argv)
                args._command.main(args)
            if stage.after is not None:
                stage.after(folder)
            timings[stage.name] = round(time.time() - t0, 1)
            state.parent.mkdir(parents=True, exist_ok=True)
            state.write_text(json.dumps({'key': key, 'seconds': timings[stage.name],
                                         'argv': stage.argv}, indent=1) + '\n')
            self.log(f'[recipe] {stage.name}: {timings[stage.name]:.1f} s')
        return self._ship()

    def _ship(self) -> Path:
        """Copy the final bundle, its ONNX graphs, MODEL_CARD.md and figures to ``--out``."""
        src = self.work / 'card' / 'bundle'
        tmp = self.out.with_name(self.out.name + '.tmp')
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(src, tmp)
        for name in ('MODEL_CARD.md', 'figures'):
            p = self.work / 'card' / name
            if p.is_dir():
                shutil.copytree(p, tmp / name)
            elif p.is_file():
                shutil.copy2(p, tmp / name)
        if self.out.exists():
            shutil.rmtree(self.out)
        tmp.rename(self.out)
        self.log(f'[recipe] bundle: {self.out} (ros2 launch ood_seg_ros ood.launch.py '
                 f'model:={self.out})')
        return self.out

    # -- the model card ---------------------------------------------------------------
    def _card(self, folder: Path) -> None:
        from .model_card import write_model_card
        write_model_card(folder, self, _eval_device(self.o.device))


def stage_parser() -> argparse.ArgumentParser:
    """Build the parser of the subcommands the stages run (the ``ood-seg`` ones)."""
    from .commands.evaluate import EvalCommand
    from .commands.export import ExportCommand
    from .commands.make_ood_set import MakeOodSetCommand
    from .commands.sml_stats import SmlStatsCommand
    from .commands.train import TrainBaseCommand, TrainEntropyCommand, TrainProbesCommand
    from .commands.train_meta import TrainMetaCommand
    parser = argparse.ArgumentParser(prog='ood-seg recipe')
    sub = parser.add_subparsers(dest='command', required=True)
    for cls in (TrainBaseCommand, TrainProbesCommand, TrainEntropyCommand, SmlStatsCommand,
                MakeOodSetCommand, EvalCommand, TrainMetaCommand, ExportCommand):
        command = cls()
        command.add_arguments(sub.add_parser(command.name))
        sub.choices[command.name].set_defaults(_command=command)
    return parser


def _copy_bundle(src: Path, dst: Path) -> None:
    """Copy a bundle's files and derived graphs (not training runs) to a new folder."""
    if not (src / BUNDLE_JSON).is_file():
        raise OodSegError(f'stage input {src} is not a bundle (no bundle.json)')
    dst.mkdir(parents=True)
    for name in BUNDLE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    if (src / 'derived').is_dir():
        shutil.copytree(src / 'derived', dst / 'derived')


def _cuda(device: str) -> bool:
    if device == 'cuda':
        return True
    if device != 'auto':
        return False
    import torch
    return torch.cuda.is_available()


def _eval_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu (eval, sml-stats, train-meta take these)."""
    return 'cuda' if _cuda(device) else 'cpu'
