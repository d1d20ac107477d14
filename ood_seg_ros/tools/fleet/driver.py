"""
Run fleet jobs on Ray (or in a plain loop), write each result as it arrives.

Ray does the scheduling: one remote task per job with its ``num_cpus`` / ``num_gpus``
request, no retries (a bag that kills its worker would kill the next one too), and
``ray.wait`` hands back whichever finishes first. Without an address a local Ray is
started on this machine (and shut down at the end); with one, the driver joins that
cluster (``ray start --head`` on one machine, ``ray start --address ...`` on the others;
every node needs this package installed, and the bags and bundles at the same paths).

Results: ``results/<key>.npz`` (the summary's arrays, read back without pickle),
``results/<key>_<i>.png`` (the worst frames) and, written last, ``results/<key>.json``
(everything else): a job whose JSON exists is done, and a rerun skips it. Failures are
not stored, so a rerun tries them again. Ctrl-C / SIGTERM cancels the pending tasks, keeps
the finished results and lets the caller write the report of what finished.
"""

import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from .jobs import Job
from .task import run_job
from ..metric_summary import EvalSummary
from ...errors import OodSegError, Terminated


class ResultStore:
    """The per-job result files under one folder (see the module docstring)."""

    def __init__(self, folder: Path):
        """Use (and create) ``folder``."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _json(self, key: str) -> Path:
        return self.folder / f'{key}.json'

    def has(self, key: str) -> bool:
        """Return whether the job ``key`` finished in an earlier or this run."""
        return self._json(key).is_file() and (self.folder / f'{key}.npz').is_file()

    def write(self, result: dict) -> dict:
        """Write one job's result (summary arrays, overlay PNGs, then the JSON); return it."""
        key = result['key']
        tmp = self.folder / f'.{key}.{os.getpid()}.npz'
        np.savez(tmp, **result['summary'])
        os.replace(tmp, self.folder / f'{key}.npz')
        files = []
        for i, item in enumerate(result['worst']):
            path = self.folder / f'{key}_{i}.png'
            path.write_bytes(item['png'])
            files.append({'stamp_ns': item['stamp_ns'], 'error': item['error'],
                          'file': path.name})
        doc = {k: v for k, v in result.items() if k not in ('summary', 'worst')}
        doc['worst'] = files
        tmp = self.folder / f'.{key}.{os.getpid()}.json'
        tmp.write_text(json.dumps(doc) + '\n')
        os.replace(tmp, self._json(key))
        return doc

    def load(self, key: str):
        """Return (result document, EvalSummary) of a finished job."""
        doc = json.loads(self._json(key).read_text())
        with np.load(self.folder / f'{key}.npz', allow_pickle=False) as z:
            summary = EvalSummary.from_state(dict(z))
        return doc, summary


def failure_reason(exc: BaseException) -> str:
    """Return one line on why a task failed: its own error, or how its worker died."""
    cause = getattr(exc, 'cause', None)
    if cause is not None and not isinstance(cause, type(exc)):
        exc = cause
    if isinstance(exc, OodSegError):
        return str(exc)
    name = type(exc).__name__
    text = ' '.join(str(exc).split())
    if 'WorkerCrashed' in name or 'worker' in text.lower() and 'died' in text.lower():
        return f'worker died while evaluating the bag ({name}): {text[:300]}'
    return f'{name}: {text[:300]}'


class Progress:
    """A tqdm bar of frames with bags done / failed in its postfix (or nothing)."""

    def __init__(self, jobs: List[Job], enabled: bool):
        """Create the bar for ``jobs`` (disabled: no output)."""
        from tqdm import tqdm
        self.n_jobs = len(jobs)
        self.done = self.failed = 0
        self.bar = tqdm(total=sum(j.frames for j in jobs), unit='frame', desc='fleet-eval',
                        disable=not enabled, dynamic_ncols=True)

    def step(self, job: Job, ok: bool) -> None:
        """Count one finished job."""
        self.done += 1
        self.failed += 0 if ok else 1
        self.bar.update(job.frames)
        self.bar.set_postfix_str(f'bags {self.done}/{self.n_jobs}, failed {self.failed}')

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


def run_jobs(jobs: List[Job], store: ResultStore, engine: str = 'ray',
             address: Optional[str] = None, num_cpus: Optional[int] = None,
             cpus_per_task: float = 1.0, gpus_per_task: float = 0.0,
             object_store_mb: Optional[int] = None, progress: bool = True,
             task: Optional[Callable[[Job], dict]] = None) -> Dict[str, dict]:
    """
    Run the jobs not yet in ``store``; return {key: outcome} for every job.

    Outcome: ``{'status': 'cached' | 'done' | 'failed' | 'not run', 'reason': ...}``.
    ``task`` replaces :func:`.task.run_job` (tests). An interrupt (Ctrl-C, SIGTERM)
    cancels what is pending and raises once the outcomes are complete: the caller gets
    them from ``err.outcomes``.
    """
    outcomes = {j.key: {'status': 'cached'} for j in jobs if store.has(j.key)}
    todo = list({j.key: j for j in jobs if j.key not in outcomes}.values())  # copies: once
    bar = Progress(jobs, progress)
    for job in jobs:
        if job.key in outcomes:
            bar.step(job, True)
    run = task or run_job
    try:
        if engine == 'loop':
            _run_loop(todo, store, run, outcomes, bar)
        elif engine == 'ray':
            _run_ray(todo, store, run, outcomes, bar, address, num_cpus, cpus_per_task,
                     gpus_per_task, object_store_mb)
        else:
            raise OodSegError(f"engine must be 'ray' or 'loop', got {engine!r}")
    except (KeyboardInterrupt, Terminated) as exc:
        for job in todo:
            outcomes.setdefault(job.key, {'status': 'not run', 'reason': 'interrupted'})
        exc.outcomes = outcomes
        raise
    finally:
        bar.close()
    return outcomes


def _finish(job, result_or_exc, store, outcomes, bar) -> None:
    """Store one job's result, or record why it failed."""
    if isinstance(result_or_exc, BaseException):
        outcomes[job.key] = {'status': 'failed', 'reason': failure_reason(result_or_exc)}
    else:
        store.write(result_or_exc)
        outcomes[job.key] = {'status': 'done'}
    bar.step(job, outcomes[job.key]['status'] == 'done')


def _run_loop(todo, store, run, outcomes, bar) -> None:
    """Every job in this process, one after the other (no Ray)."""
    for job in todo:
        try:
            result = run(job)
        except Exception as exc:  # noqa: B902 - any failure of one bag is reported
            result = exc
        _finish(job, result, store, outcomes, bar)


def _run_ray(todo, store, run, outcomes, bar, address, num_cpus, cpus_per_task,
             gpus_per_task, object_store_mb) -> None:
    """One Ray task per job; results handled in the order they finish."""
    try:
        import ray
    except ImportError:
        raise OodSegError('fleet-eval needs Ray: pip install "ood_seg_ros[fleet]" (or '
                          'ray); --engine loop runs without it') from None
    started = not ray.is_initialized()
    if started:
        kwargs = {'include_dashboard': False, 'log_to_driver': False,
                  'logging_level': 'warning'}
        if address:
            kwargs['address'] = address
        else:
            kwargs['num_cpus'] = num_cpus
            if object_store_mb:
                kwargs['object_store_memory'] = int(object_store_mb) << 20
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise OodSegError(f'cannot start or join Ray ({address or "local"}): {exc}') \
                from None
    try:
        remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task,
                            max_retries=0)(run)
        refs = {remote.remote(job): job for job in todo}
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        result = exc
                    except OodSegError as exc:
                        result = exc
                    _finish(refs[ref], result, store, outcomes, bar)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()
