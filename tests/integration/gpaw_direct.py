"""Direct GPAW evaluation for the integration test, run by the Python that has GPAW.

Usage: ``python gpaw_direct.py structures.extxyz parameters.json`` -> prints a JSON list of
``{"energy": eV, "forces": [[eV/Å]], "stress": [eV/Å^3, Voigt]}``, one per frame. No aiida, no aiida-mlmat: an
independent reference.
"""

import json
import sys

from ase.io import read
from gpaw import GPAW, PW


def main() -> None:
    frames = read(sys.argv[1], index=':', format='extxyz')
    with open(sys.argv[2]) as handle:
        params = json.load(handle)
    mode = params.pop('mode')
    results = []
    for atoms in frames:
        atoms.calc = GPAW(mode=PW(mode['ecut']), txt=None, **params)
        results.append(
            {
                'energy': atoms.get_potential_energy(),
                'forces': atoms.get_forces().tolist(),
                'stress': atoms.get_stress(voigt=True).tolist(),
            }
        )
    print(json.dumps(results))


if __name__ == '__main__':
    main()
