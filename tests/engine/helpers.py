"""Helpers for engine tests: direct EMT references and small builders."""

from __future__ import annotations

import numpy as np
from ase.calculators.emt import EMT

from aiida_mlmat.common.constants import INDEX_KEY


def assert_labels_equal_emt(frames, atol: float = 1e-8) -> int:
    """Assert that every stored energy, force and stress equals a direct EMT evaluation; return the count."""
    for frame in frames:
        stored = frame.calc.results
        atoms = frame.copy()
        atoms.calc = EMT()
        assert abs(atoms.get_potential_energy() - stored['energy']) < atol, frame.info.get(INDEX_KEY)
        np.testing.assert_allclose(stored['forces'], atoms.get_forces(), rtol=0, atol=atol)
        np.testing.assert_allclose(stored['stress'], atoms.get_stress(voigt=True), rtol=0, atol=atol)
    return len(frames)


SMALL_SAMPLE = {
    'supercell': [1, 1, 1],
    'include_seeds': True,
    'rattle': {'count': 2, 'stdev': 0.05, 'seed': 1},
    'strain': {'count': 1, 'max_strain': 0.02, 'rattle_stdev': 0.02, 'seed': 1},
    'vacancies': {'count': 1, 'seed': 1},
}
