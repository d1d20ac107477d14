"""
``ood-seg fleet-eval``: a fleet's recorded bags through one or two bundles, on Ray.

* :mod:`.jobs`: the bags named on the command line (folders, globs, list files), content
  hashes of bags and bundles, one :class:`~.jobs.Job` per (bag or chunk, bundle) with
  the cache key of its result;
* :mod:`.task`: one job in one process: the offline bag engine
  (:func:`ood_seg_ros.tools.bagtools.offline.run_offline`, the node's Pipeline) into an
  :class:`ood_seg_ros.tools.metric_summary.EvalSummary`, per-frame errors and the worst frames'
  overlays; no Ray in it;
* :mod:`.driver`: Ray (local or ``--address``), one remote task per job with its CPU / GPU
  request, results written per job as they arrive, failures with their reasons, reruns
  that skip finished jobs, a progress bar, Ctrl-C; ``engine='loop'`` runs the same jobs
  in this process (no Ray: the baseline of the overhead figure);
* :mod:`.report`: merged tables (pooled per bundle, per bag sorted by the A/B change),
  ``fleet.json``, ``report.md``, PR curves and the worst frames.

Ray is an optional dependency (``pip install ood_seg_ros[fleet]``): only the driver
imports it, and only when it runs; the node never does.
"""
