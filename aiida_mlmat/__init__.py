"""aiida-mlmat: provenance-tracked machine-learning-potential workflows for materials science.

This top-level module imports nothing heavy (and never aiida), so that the remote worker
(``aiida_mlmat.worker``) can run in a Python that has only numpy and ASE.
"""

__version__ = '0.1.0'
