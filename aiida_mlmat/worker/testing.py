"""A calculator for exercising fault handling end to end: EMT that fails on chosen formulas.

Registered as ``faulty``. Real calculators fail in the same ways (a DFT code raising on an SCF failure,
a potential returning NaN); this one does it on demand so that tests can run it through the daemon.
"""

from __future__ import annotations

from typing import Any

from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT


class FaultyCalculator(Calculator):
    """EMT, except that it raises for formulas in ``raise_for`` and returns NaN or inf for ``nan_for``/``inf_for``."""

    implemented_properties = ('energy', 'forces', 'stress')

    def __init__(
        self,
        raise_for: list[str] | None = None,
        nan_for: list[str] | None = None,
        inf_for: list[str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.raise_for = set(raise_for or [])
        self.nan_for = set(nan_for or [])
        self.inf_for = set(inf_for or [])
        self._emt = EMT()

    def calculate(self, atoms: Any = None, properties: Any = ('energy',), system_changes: Any = all_changes) -> None:
        """Compute with EMT, then apply the requested fault."""
        super().calculate(atoms, properties, system_changes)
        formula = self.atoms.get_chemical_formula()
        if formula in self.raise_for:
            raise RuntimeError(f'deliberate failure for {formula}')
        self._emt.calculate(self.atoms, properties, system_changes)
        self.results = dict(self._emt.results)
        if formula in self.nan_for:
            self.results['energy'] = float('nan')
        if formula in self.inf_for:
            self.results['forces'] = self.results['forces'] * float('inf')
