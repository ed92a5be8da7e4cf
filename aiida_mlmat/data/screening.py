"""One screened candidate of a convex-hull screening, with queryable attributes.

Attributes (energies in eV/atom): ``name``, ``formula`` (reduced), ``composition`` ({element: count}),
``n_atoms``, ``status`` (``ok`` or ``failed``), ``reason`` (why it failed, else empty), ``energy_per_atom``,
``e_form_per_atom``, ``e_above_hull``, ``e_above_hull_std`` (ensemble spread, 0 for one model), ``p_stable``
(fraction of ensemble members that put it on the hull), ``stable`` (bool), ``converged`` (relaxation), the
members' spread ``e_form_per_atom_std``, ``units`` ({quantity: unit}), and, when
verified with the reference calculator:

- ``reference_e_above_hull``, ``reference_e_form_per_atom``, ``reference_stable``: the reference calculator's
  values on the *verification hull*, built from the verified candidates and the elements only;
- ``model_e_above_hull``: the energy model's value on that same small hull, the like-for-like partner of
  ``reference_e_above_hull``. It is not ``e_above_hull``, which places the candidate on the full screening hull
  (every candidate), and the two differ where other candidates lie below it.

A QueryBuilder filter such as ``{'attributes.e_above_hull': {'<': 0.05}}`` on this class finds candidates
below 50 meV/atom above the hull.
"""

from __future__ import annotations

from typing import Any

from aiida import orm

#: Attributes every candidate node carries (others are optional).
REQUIRED_KEYS = ('name', 'formula', 'status')


class ScreenedCandidateData(orm.Dict):
    """A screened candidate: its energies, hull distance, stability verdict and uncertainty."""

    def __init__(self, value: dict[str, Any] | None = None, **kwargs: Any):
        value = dict(value or kwargs.pop('dict', {}) or {})
        missing = [key for key in REQUIRED_KEYS if key not in value]
        if missing:
            raise ValueError(f'a screened candidate needs the keys {missing}')
        super().__init__(value=value, **kwargs)

    @property
    def name(self) -> str:
        """Candidate name (file stem or generated name)."""
        return self.base.attributes.get('name')

    @property
    def e_above_hull(self) -> float | None:
        """Energy above the convex hull in eV/atom (ensemble mean), None where the candidate failed."""
        return self.base.attributes.get('e_above_hull', None)

    @property
    def stable(self) -> bool:
        """Whether the candidate is on the hull (within the screening's tolerance)."""
        return bool(self.base.attributes.get('stable', False))
