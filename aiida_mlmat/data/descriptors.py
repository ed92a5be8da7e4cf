"""Data plugin ``mlmat.descriptors``: per-atom descriptor arrays of a configuration set.

Arrays ``features`` (every atom of every structure, in order: (n_atoms_total, n_features)), ``offsets``
(n_structures + 1: structure ``i`` is rows ``offsets[i]:offsets[i + 1]``) and ``means`` (n_structures,
n_features); the descriptor definition (kind, species, cutoffs in Å, orders or ACSF parameters) is in the
attributes. The node's hash is its content, so AiiDA caching reuses an identical computation.

Nodes stored before 2026-12-06 hold one array ``structure_<i>`` per structure instead of ``features`` and
``offsets``; they are read the same way. (One array per structure made storing and reading a set of 10,000
configurations take minutes: AiiDA lists every array of the node at each read.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiida import orm


class DescriptorsData(orm.ArrayData):
    """Per-atom and per-structure descriptors with their definition."""

    def set_descriptors(self, arrays: list[np.ndarray], definition: dict[str, Any], source_sha256: str | None = None):
        """Store the structures' per-atom arrays (as one array and the offsets), their means and the definition."""
        if not arrays:
            raise ValueError('no descriptor arrays given')
        n_features = arrays[0].shape[1]
        for index, array in enumerate(arrays):
            if array.ndim != 2 or array.shape[1] != n_features:
                raise ValueError(f'structure {index}: expected (n_atoms, {n_features}), got {array.shape}')
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([array.shape[0] for array in arrays], out=offsets[1:])
        self.set_array('features', np.concatenate([np.asarray(array) for array in arrays], axis=0))
        self.set_array('offsets', offsets)
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

    def _features(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``features`` and ``offsets``, read once per Python object (a stored node never changes); None for a node
        of the earlier layout (one array per structure)."""
        cached = getattr(self, '_mlmat_features', None)
        if cached is not None and self.is_stored:
            return cached
        if 'features' not in self.get_arraynames():
            return None
        pair = (self.get_array('features'), self.get_array('offsets'))
        if self.is_stored:
            self._mlmat_features = pair
        return pair

    def get_structure(self, index: int) -> np.ndarray:
        """Per-atom descriptors of structure ``index`` (n_atoms, n_features)."""
        if not 0 <= index < self.n_structures:
            raise IndexError(f'structure {index}: the node holds {self.n_structures} (0 to {self.n_structures - 1})')
        pair = self._features()
        if pair is None:
            return self.get_array(f'structure_{index}')
        features, offsets = pair
        return features[offsets[index] : offsets[index + 1]]

    def get_all(self) -> list[np.ndarray]:
        """Per-atom descriptors of every structure."""
        pair = self._features()
        if pair is None:
            return [self.get_array(f'structure_{index}') for index in range(self.n_structures)]
        features, offsets = pair
        return np.split(features, offsets[1:-1])

    def get_means(self) -> np.ndarray:
        """Per-structure mean descriptors (n_structures, n_features)."""
        return self.get_array('means')
