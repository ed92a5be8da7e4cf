"""Convex-hull stability screening: candidates, formation energies, hull distances, metrics and plots.

Pure Python (pymatgen, numpy, ase, matplotlib); nothing here imports AiiDA. The calcfunctions of
:mod:`aiida_mlmat.workflows` call these functions.

- :mod:`.candidates`: read candidate structures from files, or enumerate ordered decorations of small fcc, bcc and
  hcp supercells.
- :mod:`.phase`: formation energies and energies above the hull (one model, or an ensemble of models).
- :mod:`.metrics`: matbench-discovery classification and regression metrics, top-k selection.
- :mod:`.plot`: hull plot (PNG) and result table (CSV).
"""

from __future__ import annotations
