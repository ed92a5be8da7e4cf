"""Data plugin ``mlmat.descriptors``: per-atom descriptor arrays of a configuration set.

Arrays ``structure_<i>`` (n_atoms_i, n_features) and ``means`` (n_structures, n_features); the descriptor
definition (kind, species, cutoffs in Å, orders or ACSF parameters) is in the attributes. The node's hash is
its content, so AiiDA caching reuses an identical computation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiida import orm


class DescriptorsData(orm.ArrayData):
    """Per-atom and per-structure descriptors with their definition."""

    def set_descriptors(self, arrays: list[np.ndarray], definition: dict[str, Any], source_sha256: str | None = None):
        """Store one array per structure, their means and the definition."""
        if not arrays:
            raise ValueError('no descriptor arrays given')
        n_features = arrays[0].shape[1]
        for index, array in enumerate(arrays):
            if array.ndim != 2 or array.shape[1] != n_features:
                raise ValueError(f'structure {index}: expected (n_atoms, {n_features}), got {array.shape}')
            self.set_array(f'structure_{index}', np.asarray(array))
        self.set_array('means', np.stack([array.mean(axis=0) for array in arrays]))
        self.base.attributes.set_many(
            {
                'definition': dict(definition),
                'kind': definition['kind'],
                'species': list(definition['species']),
                'rcut': definition['rcut'],
                'n_structures': len(arrays),
                'n_atoms_total': int(sum(array.shape[0] for array in arrays)),
                'n_features': int(n_features),
                'source_sha256': source_sha256,
            }
        )

    @property
    def n_structures(self) -> int:
        """Number of structures."""
        return self.base.attributes.get('n_structures')

    @property
    def definition(self) -> dict[str, Any]:
        """The descriptor definition (as :meth:`DescriptorSpec.as_dict`)."""
        return dict(self.base.attributes.get('definition'))

    def get_structure(self, index: int) -> np.ndarray:
        """Per-atom descriptors of structure ``index``."""
        return self.get_array(f'structure_{index}')

    def get_all(self) -> list[np.ndarray]:
        """Per-atom descriptors of every structure."""
        return [self.get_structure(index) for index in range(self.n_structures)]

    def get_means(self) -> np.ndarray:
        """Per-structure mean descriptors (n_structures, n_features)."""
        return self.get_array('means')
