"""Production tier: a DFT configuration whose SCF does not converge is excluded with its reason, not lost.

GPAW (Debian's ``gpaw``, PW 250 eV, 2x2x2 k-points) needs 10-12 SCF iterations for the Al cells below and 16
for the cell with one atom pushed 0.67 Å off its site; with ``maxiter`` 13 that one raises GPAW's
``KohnShamConvergenceError``. The worker records it as an exclusion (index, formula, reason), labels the
others, and the labels equal a direct GPAW run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from ase.build import bulk

from aiida_mlmat.common.constants import INDEX_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.workflows.label import LabelBaseWorkChain
from tests.integration.test_dft_gpaw import gpaw_codes, gpaw_python  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.production, pytest.mark.integration]

PARAMETERS = {'mode': {'name': 'pw', 'ecut': 250}, 'kpts': [2, 2, 2], 'xc': 'PBE', 'maxiter': 13}


def al_cells() -> list:
    """Three Al cells: perfect (10 SCF iterations), a vacancy (12), one atom displaced by 0.67 Å (16)."""
    perfect = bulk('Al', 'fcc', a=4.05, cubic=True)
    displaced = perfect.copy()
    displaced.positions[0] += [0.6, 0.3, 0.0]
    vacancy = perfect.copy()
    del vacancy[0]
    frames = []
    for index, atoms in enumerate((perfect, displaced, vacancy)):
        atoms.info[INDEX_KEY] = index
        frames.append(atoms)
    return frames


def test_unconverged_scf_is_an_exclusion_with_its_reason(submit_and_await, gpaw_codes, gpaw_python, tmp_path):  # noqa: F811
    builder = LabelBaseWorkChain.get_builder()
    builder.label.code = gpaw_codes['mlmat-worker-gpaw']
    builder.label.configurations = ConfigurationSetData(al_cells())
    builder.label.calculator = orm.Dict({'name': 'gpaw', 'parameters': PARAMETERS})
    builder.max_iterations = orm.Int(2)
    node = submit_and_await(builder, timeout=600)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)

    calcs = [n for n in node.called if isinstance(n, orm.CalcJobNode)]
    assert len(calcs) == 1 and calcs[0].is_finished_ok  # one unconverged cell neither fails nor restarts the job
    labelled = node.outputs.configurations
    assert labelled.count == 2
    assert [frame.info[INDEX_KEY] for frame in labelled.get_atoms()] == [0, 2]
    assert labelled.base.attributes.get('n_excluded') == 1
    (record,) = labelled.excluded
    assert record['index'] == 1 and record['formula'] == 'Al4'
    assert 'KohnShamConvergenceError' in record['reason'] and 'converge' in record['reason'], record
    assert node.outputs.results['n_excluded'] == 1 and node.outputs.results['excluded'] == [record]

    # The two labels equal a direct GPAW run with the same parameters.
    structures = tmp_path / 'structures.extxyz'
    labelled.write_extxyz(structures)
    parameters = tmp_path / 'parameters.json'
    parameters.write_text(json.dumps(PARAMETERS))
    script = Path(__file__).parents[1] / 'integration' / 'gpaw_direct.py'
    output = subprocess.run(
        [gpaw_python, str(script), str(structures), str(parameters)], capture_output=True, text=True, check=True
    )
    direct = json.loads(output.stdout.strip().splitlines()[-1])
    for frame, reference in zip(labelled.get_atoms(), direct, strict=True):
        assert abs(frame.calc.results['energy'] - reference['energy']) < 1e-6
        np.testing.assert_allclose(frame.calc.results['forces'], reference['forces'], rtol=0, atol=1e-6)
