"""Unit tier: what the DFT path checks before and records after a job (no GPAW needed here).

GPAW parameters that would fail every configuration are refused before submission; a Code that records its GPAW's
keywords refuses a misspelled one; a calculator without stress keeps energy and forces; a failed script job's
reason carries the exception its stderr ended with; a training set lacking forces is refused before submission;
an energy map of an unlabelled set is refused, and unlabelled points of a partly labelled one stay on the map.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlmat.calcjobs.label import CALCULATORS_EXTRA, code_parameters_error
from aiida_mlmat.common.text import condense_log
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.ml.selection import check_colour, map_colours
from aiida_mlmat.worker.calculators import parameters_error
from aiida_mlmat.worker.tasks.label import compute_labels
from aiida_mlmat.workflows.label import failure_reason, stderr_exception
from aiida_mlmat.workflows.training import missing_labels_error

pytestmark = pytest.mark.unit

GPAW_RECORD = {'version': '22.8.0', 'parameters': ['convergence', 'h', 'kpts', 'maxiter', 'mode', 'txt', 'xc']}


@pytest.mark.parametrize(
    ('parameters', 'message'),
    [
        ({'mode': {'ecut': 250}}, '`mode` needs a `name`, one of pw, fd, lcao'),
        ({'mode': {'name': 'pw', 'ecut': -50}}, '`mode.ecut` (eV, the plane-wave cut-off) must be a positive number'),
        ({'mode': {'name': 'pw', 'ecut': '300'}}, 'must be a positive number, got "300"'),
        ({'mode': 'planewave'}, '`mode` must be one of pw, fd, lcao'),
        ({'mode': 300}, '`mode` must be a name'),
        ({'h': 0}, '`h` (Å, the grid spacing) must be a positive number, got 0'),
        ({'kpts': [3, 3]}, '`kpts` as a grid must be three positive integers'),
        ({'kpts': [2, 0, 2]}, '`kpts` as a grid must be three positive integers'),
        ({'kpts': [2.5, 2, 2]}, '`kpts` as a grid must be three positive integers'),
    ],
)
def test_gpaw_parameters_that_fail_every_configuration_are_refused(parameters, message):
    error = parameters_error('gpaw', parameters)
    assert error is not None and message in error


@pytest.mark.parametrize(
    'parameters',
    [
        {'mode': {'name': 'pw', 'ecut': 300}, 'kpts': [3, 3, 3], 'xc': 'PBE'},
        {'mode': 'lcao', 'basis': 'dzp', 'kpts': {'density': 2.5}},
        {'mode': 'fd', 'h': 0.2, 'kpts': [[0, 0, 0], [0.5, 0, 0]]},  # explicit k-points, not a grid
        {},
    ],
)
def test_valid_gpaw_parameters_pass(parameters):
    assert parameters_error('gpaw', parameters) is None


def test_a_code_that_records_gpaw_keywords_refuses_a_misspelled_one(aiida_profile, aiida_localhost):
    code = orm.InstalledCode(label='gpaw-check', computer=aiida_localhost, filepath_executable='/bin/true').store()
    spec = {'name': 'gpaw', 'parameters': {'kpt': [2, 2, 2], 'xc': 'PBE'}}
    assert code_parameters_error(code, spec) is None  # nothing recorded: nothing to check against
    code.base.extras.set(CALCULATORS_EXTRA, {'gpaw': GPAW_RECORD})
    error = code_parameters_error(code, spec)
    assert error.startswith('calculator.parameters: gpaw 22.8.0 on the Code `gpaw-check@localhost`')
    assert "takes no parameter(s) ['kpt'] (did you mean `kpts`?)" in error
    assert code_parameters_error(code, {'name': 'gpaw', 'parameters': {'kpts': [2, 2, 2], 'txt': None}}) is None
    assert code_parameters_error(code, {'name': 'emt', 'parameters': {}}) is None  # recorded for gpaw only


class _NoStress(EMT):
    """EMT without stress, like GPAW in its fd and lcao modes."""

    def get_stress(self, atoms=None, voigt=True, apply_constraint=True):
        raise PropertyNotImplementedError('stress not present in this calculation')


def test_a_calculator_without_stress_keeps_energy_and_forces():
    atoms = bulk('Cu', 'fcc', a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    results = compute_labels(atoms, _NoStress(), ['energy', 'forces', 'stress'])
    assert set(results) == {'energy', 'forces'}
    reference = atoms.copy()
    reference.calc = EMT()
    assert results['energy'] == pytest.approx(reference.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(results['forces'], reference.get_forces(), atol=1e-12)
    assert set(compute_labels(atoms, EMT(), ['energy', 'forces', 'stress'])) == {'energy', 'forces', 'stress'}


GPAW_STDERR = """/usr/lib/python3/dist-packages/ase/calculators/calculator.py:1: FutureWarning: deprecated
Traceback (most recent call last):
  File "/tmp/aiida_run/aiida_script.py", line 31, in <module>
    calculation.get_potential_energy()
  File "/usr/lib/python3/dist-packages/gpaw/calculator.py", line 350, in calculate
    raise KohnShamConvergenceError(
gpaw.KohnShamConvergenceError: Did not converge!  See text output for help.
"""


def _failed_script_job(stderr: str | None) -> orm.CalcJobNode:
    node = orm.CalcJobNode(process_type='aiida.calculations:ase.ase')
    node.set_process_label('AseCalculation')
    node.set_exit_status(300)
    node.set_exit_message('One of the expected output files was missing.')
    node.set_option('scheduler_stderr', '_scheduler-stderr.txt')
    node.store()
    retrieved = orm.FolderData()
    if stderr is not None:
        retrieved.base.repository.put_object_from_filelike(io.BytesIO(stderr.encode()), '_scheduler-stderr.txt')
    retrieved.base.links.add_incoming(node, LinkType.CREATE, 'retrieved')
    retrieved.store()
    return node


def test_a_failed_script_job_names_the_exception_its_stderr_ends_with(aiida_profile):
    node = _failed_script_job(GPAW_STDERR)
    assert stderr_exception(node) == 'gpaw.KohnShamConvergenceError: Did not converge!  See text output for help.'
    assert failure_reason(node) == (
        f'AseCalculation<{node.pk}> failed with exit status 300: One of the expected output files was missing.; '
        'its stderr ends with gpaw.KohnShamConvergenceError: Did not converge!  See text output for help.'
    )
    quiet = _failed_script_job('only a warning\n')
    assert stderr_exception(quiet) is None
    assert failure_reason(quiet).endswith('One of the expected output files was missing.')
    assert stderr_exception(_failed_script_job(None)) is None


def test_condense_log_keeps_the_last_exception_of_a_chain():
    chained = GPAW_STDERR.replace(
        'gpaw.KohnShamConvergenceError',
        'KeyError: 1\n\nDuring handling of the above exception, another exception occurred:\n\n'
        'Traceback (most recent call last):\n  File "x.py", line 2, in <module>\n    f()\n'
        'gpaw.KohnShamConvergenceError',
    )
    assert condense_log(chained).endswith('gpaw.KohnShamConvergenceError: Did not converge!  See text output for help.')
    assert 'KeyError' not in condense_log(chained).split(': ', 1)[1]


def _frames(n: int, forces: bool) -> list:
    frames = []
    for index in range(n):
        atoms = bulk('Cu', 'fcc', a=3.6 + 0.01 * index, cubic=True)
        atoms.calc = EMT()
        results = {'energy': atoms.get_potential_energy()}
        if forces:
            results['forces'] = atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def test_a_training_set_without_forces_is_refused_unless_their_weight_is_zero(aiida_profile):
    energy_only = ConfigurationSetData(_frames(4, forces=False))
    error = missing_labels_error(energy_only, {})
    assert error == (
        'configurations: the set has no forces on every configuration, and the loss weights them '
        '(training.forces_weight = 10.0); label them, or set the weight to 0 '
        '(`--overrides \'{"training": {"forces_weight": 0}}\'`)'
    )
    assert missing_labels_error(energy_only, {'forces_weight': 0}) is None
    labelled = ConfigurationSetData(_frames(4, forces=True))
    assert missing_labels_error(labelled, {}) is None
    assert 'no stress on every configuration' in missing_labels_error(labelled, {'stress_weight': 0.5})


def test_the_labels_a_loss_weights_are_read_one_way_everywhere():
    """One rule (``ml.training.weighted_labels``) for the training builder, the active-learning loop, the training
    job and the worker: energy always; forces and stress where their weight (default 10 and 0) is above 0."""
    from aiida_mlmat.ml.training import TrainingConfig, weighted_labels

    assert weighted_labels({}) == ['energy', 'forces']
    assert weighted_labels({'forces_weight': 0}) == ['energy']
    assert weighted_labels({'forces_weight': None, 'stress_weight': 0.5}) == ['energy', 'forces', 'stress']
    assert weighted_labels(TrainingConfig(forces_weight=0.0, stress_weight=1.0)) == ['energy', 'stress']


def test_an_energy_map_needs_an_energy_and_keeps_unlabelled_points():
    unlabelled = [bulk('Cu', 'fcc', a=3.6, cubic=True), bulk('Cu', 'fcc', a=3.7, cubic=True)]
    with pytest.raises(ValueError, match='no configuration has an energy'):
        map_colours(unlabelled, 'energy')
    with pytest.raises(ValueError, match='no configuration has an energy'):
        check_colour('energy', ['Cu'], energies=False)
    values, label = map_colours(unlabelled[:1] + _frames(1, forces=True), 'energy')
    assert label == 'energy (eV/atom)' and np.isnan(values[0]) and np.isfinite(values[1])


def test_the_training_workflow_refuses_a_set_without_forces_before_submission(aiida_profile, aiida_localhost):
    """The protocol's loss weights forces: the workflow's own validation refuses the set (`mlmat train` exit 2)."""
    from aiida_mlmat.workflows.training import TrainingWorkChain

    code = orm.InstalledCode(label='train-check', computer=aiida_localhost, filepath_executable='/bin/true').store()
    energy_only = ConfigurationSetData(_frames(6, forces=False))
    builder = TrainingWorkChain.get_builder_from_protocol(code, energy_only)
    error = TrainingWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    assert error is not None and 'the set has no forces on every configuration' in error.message
    builder = TrainingWorkChain.get_builder_from_protocol(
        code, energy_only, overrides={'training': {'forces_weight': 0}}
    )
    assert TrainingWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True))) is None


def test_the_gpaw_worker_code_is_refused_for_training_and_descriptors(aiida_profile, aiida_localhost):
    """The GPAW worker's Python has no torch: training with it ended in the worker with ModuleNotFoundError (exit
    350). The training workflow (`mlmat train --code`), the training job and the descriptors job refuse it first."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    from aiida_mlmat.calcjobs.descriptors import DescriptorsCalculation
    from aiida_mlmat.calcjobs.train import TrainCalculation
    from aiida_mlmat.common.constants import TORCH_EXTRA
    from aiida_mlmat.workflows.training import TrainingWorkChain

    gpaw = orm.InstalledCode(label='gpaw-no-torch', computer=aiida_localhost, filepath_executable='/bin/true').store()
    gpaw.base.extras.set(TORCH_EXTRA, False)
    labelled = ConfigurationSetData(_frames(6, forces=True))
    builder = TrainingWorkChain.get_builder_from_protocol(gpaw, labelled)
    error = TrainingWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    assert error is not None and error.port == 'inputs.member.trainer'  # the member's TrainCalculation refuses it
    assert error.message == (
        f'code: `{gpaw.full_label}` is the GPAW worker Code, whose Python has no torch to run the training; give the '
        'mlmat-worker Code (the GPAW one samples, labels and relaxes with GPAW; if its Python has torch, set the '
        "Code's extra `mlmat_torch` to true)"
    )
    runner = get_manager().get_runner()
    frames = _frames(6, forces=True)
    with pytest.raises(ValueError, match=r'code: `gpaw-no-torch@.*` is the GPAW worker Code.*the training'):
        instantiate_process(
            runner, TrainCalculation, code=gpaw, train=ConfigurationSetData(frames[:4]),
            validation=ConfigurationSetData(frames[4:]),
        )  # fmt: skip
    with pytest.raises(ValueError, match=r'code: `gpaw-no-torch@.*` is the GPAW worker Code.*the descriptors'):
        instantiate_process(runner, DescriptorsCalculation, code=gpaw, configurations=labelled)
    from aiida_mlmat.workflows.reference import ReferenceWorkChain

    reference = ReferenceWorkChain.get_builder_from_protocol(
        gpaw, calculator={'name': 'emt', 'parameters': {}}, elements=['Cu'], overrides={'select': {'n': 3}}
    )
    reference.select.code = gpaw  # the selection's descriptors on it: refused with the workflow's inputs
    error = ReferenceWorkChain.spec().inputs.validate(dict(reference._inputs(prune=True)))
    assert error is not None and 'select.code: `gpaw-no-torch@localhost` is the GPAW worker Code' in error.message
    gpaw.base.extras.set(TORCH_EXTRA, True)  # a GPAW worker whose Python has torch too
    assert TrainingWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True))) is None
    assert ReferenceWorkChain.spec().inputs.validate(dict(reference._inputs(prune=True))) is None


def test_wait_names_the_exception_a_failed_script_job_ends_its_stderr_with(aiida_profile):
    """`--wait` on a reference run whose aiida-ase job failed: the one-line error names GPAW's exception from the
    job's stderr, not only aiida-ase's "an output file was missing"."""
    from aiida_mlmat.cli.utils import failing_step
    from tests.conftest import finished_process

    parent = finished_process(orm.WorkflowNode, 'aiida.workflows:mlmat.reference', 'ReferenceWorkChain', 301)
    job = finished_process(
        orm.CalcJobNode, 'aiida.calculations:ase.ase', 'AseCalculation', 300,
        'One of the expected output files was missing.', caller=parent, scheduler_stderr='_scheduler-stderr.txt',
    )  # fmt: skip
    retrieved = orm.FolderData()
    retrieved.base.repository.put_object_from_filelike(io.BytesIO(GPAW_STDERR.encode()), '_scheduler-stderr.txt')
    retrieved.base.links.add_incoming(job, LinkType.CREATE, 'retrieved')
    retrieved.store()
    assert failing_step(parent) == (
        f'AseCalculation<{job.pk}> (finished, exit status 300): One of the expected output files was missing.; its '
        'stderr ends with gpaw.KohnShamConvergenceError: Did not converge!  See text output for help.; see '
        f'`verdi process report {parent.pk}`'
    )
