"""The remote side of aiida-mlmat: ``mlmat-worker TASK input.json``.

This package never imports aiida. It needs numpy, ASE and jsonschema, and whatever code the chosen
calculator wraps (GPAW for ``gpaw``). The CalcJobs write ``input.json`` and data files, the worker
writes ``results.json`` and output files; see :mod:`aiida_mlmat.worker.schema`.
"""
