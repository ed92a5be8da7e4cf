"""Engine tier: ``mlmat.active_learning`` through the daemon, EMT as the reference, tiny Cu cells.

The initial set holds only near-equilibrium Cu frames; exploration runs hot and strained MD with the ensemble,
so the loop must add data to describe the held-out set (EMT MD over the same temperature and strain ladder).
"""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlmat import query
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.workflows.active_functions import ITERATION_KEY, SOURCE_KEY
from aiida_mlmat.workflows.active_learning import ActiveLearningWorkChain
from tests.engine.helpers import assert_labels_equal_emt

pytestmark = pytest.mark.engine

OVERRIDES = {
    'training': {
        'ensemble_size': 2,
        'test_fraction': 0.15,
        'validation_fraction': 0.15,
        'model': {'hidden': [16], 'descriptor': {'kind': 'chebyshev', 'rcut': 4.0, 'n_radial': 6, 'n_angular': 3}},
        'training': {'epochs': 25, 'batch_size': 4, 'learning_rate': 0.01, 'patience': 40},
    },
    'retrain': {'epochs': 60, 'learning_rate': 0.01},
    'exploration': {'temperatures': [1200.0], 'strains': [-0.03, 0.03], 'steps': 24, 'interval': 4,
                    'timestep': 4.0, 'friction': 0.05},
    'selection': {'lower': 0.02, 'upper': 5.0, 'max_per_iteration': 6},
    'convergence': {'fraction': 0.0, 'max_iterations': 2},
    'chunk_size': 10,
}  # fmt: skip


def labelled(frames):
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = EMT()
        results = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces(), 'stress': atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        out.append(atoms)
    return out


def cu(a: float = 3.61):
    return bulk('Cu', 'fcc', a=a, cubic=True)


@pytest.fixture(scope='module')
def near_equilibrium():
    """Ten gently rattled (0.04 Å) Cu4 cells within 1 % of the equilibrium lattice constant: the small initial set.

    Near equilibrium but not degenerate: with identical cells the descriptor normalisation would have no spread
    to learn from, and every hot configuration would sit hundreds of standard deviations away (errors of 15 eV/Å
    that no handful of labels repairs). The held-out set (1200 K, ±3 % strain) still lies well outside it."""
    frames = []
    for seed in range(10):
        atoms = cu((3.575, 3.61, 3.645)[seed % 3])
        atoms.rattle(0.04, seed=seed)
        frames.append(atoms)
    return ConfigurationSetData(labelled(frames)).store()


@pytest.fixture(scope='module')
def held_out():
    """A fixed EMT test set: Langevin MD of Cu4 at 1200 K with -3 % and +3 % strain (20 frames)."""
    from aiida_mlmat.worker.calculators import get_factory
    from aiida_mlmat.worker.tasks.sample import md_snapshots

    spec = {'calculator': {'name': 'emt'}, 'temperatures': [1200.0], 'strains': [-0.03, 0.03], 'steps': 60,
            'interval': 6, 'timestep': 4.0, 'friction': 0.05}  # fmt: skip
    snapshots = md_snapshots(cu(), spec, get_factory('emt'), np.random.default_rng(99))
    return ConfigurationSetData(labelled([frame for _, frame in snapshots])).store()


@pytest.fixture(scope='module')
def seeds():
    return ConfigurationSetData([cu()]).store()


def builder_for(worker_code, training_set, seeds, calculator, overrides=None, **kwargs):
    from aiida_mlmat.workflows.protocols import recursive_merge

    return ActiveLearningWorkChain.get_builder_from_protocol(
        worker_code,
        training_set,
        seeds,
        calculator=calculator,
        overrides=recursive_merge(OVERRIDES, overrides or {}),
        **kwargs,
    )


#: Gentle exploration (100 K, no strain) that a near-equilibrium ensemble describes well: for the stop tests.
GENTLE = {'exploration': {'temperatures': [100.0], 'strains': [0.0], 'timestep': 1.0, 'steps': 8, 'interval': 4}}
#: The reference raises for Cu8: the doubled hull candidate cannot be labelled.
FAULTY = {'name': 'faulty', 'parameters': {'raise_for': ['Cu8']}}


_RUNS: dict = {}


@pytest.fixture
def runs(started_daemon_client, worker_code, emt, near_equilibrium, held_out, seeds):
    """The three loops of this module, submitted together on first use so that their jobs overlap."""
    from aiida.engine import submit

    if _RUNS:
        return _RUNS
    hull = ConfigurationSetData([cu(3.52), cu(3.70), cu(3.61).repeat((2, 1, 1))])
    main = builder_for(worker_code, near_equilibrium, seeds, FAULTY, test_set=held_out, hull_candidates=hull)
    target = builder_for(
        worker_code, near_equilibrium, seeds, emt, {**GENTLE, 'convergence': {'target_forces_rmse': 50.0}}
    )
    fraction = builder_for(
        worker_code,
        near_equilibrium,
        seeds,
        emt,
        {**GENTLE, 'selection': {'lower': 2.0, 'upper': 5.0}, 'convergence': {'fraction': 0.05}},
    )
    _RUNS.update(main=submit(main), target=submit(target), fraction=submit(fraction))
    return _RUNS


def reports(node) -> str:
    return '\n'.join(log.message for log in orm.Log.collection.get_logs_for(node))


def test_loop_adds_data_where_the_ensemble_disagrees_and_the_error_falls(
    submit_and_await, runs, near_equilibrium, held_out
):
    """Two iterations (stop: max_iterations): the held-out force RMSE falls; every added label equals EMT; the hull
    candidates join the first queue; the one the reference fails on is excluded with its reason and stays pending
    while the loop goes on with the rest; the members of iteration 2 restart from the weights of iteration 1."""
    node = submit_and_await(runs['main'], timeout=900)
    assert node.is_finished_ok, reports(node)
    assert node.outputs.stop_reason.value == 'max_iterations'
    metrics = node.outputs.metrics.get_dict()
    assert metrics['stop_reason'] == 'max_iterations' and metrics['n_iterations'] == 2
    iterations = metrics['iterations']
    rmse = [record['test']['forces_rmse'] for record in iterations]
    assert all(record['test']['source'] == 'test_set' and record['test']['n_test'] == 20 for record in iterations)
    assert rmse[-1] < 0.8 * rmse[0], reports(node)  # eV/Å on the fixed held-out EMT set
    # The recorded error (what `target_forces_rmse` is compared with) is the iteration's potential against EMT,
    # recomputed here from the held-out positions: EMT forces afresh, the ensemble's mean forces, numpy's RMSE.
    for record, recorded in zip(iterations, rmse, strict=True):
        calculator = orm.load_node(record['potential']).get_calculator()
        errors = []
        for frame in held_out.get_atoms():
            atoms = frame.copy()
            atoms.calc = EMT()
            reference = atoms.get_forces()
            atoms.calc = calculator
            errors.append(atoms.get_forces() - reference)
        assert recorded == pytest.approx(float(np.sqrt(np.mean(np.concatenate(errors) ** 2))), rel=1e-4)

    # Counts add up: what was labelled is what the final set gained.
    first, last = iterations
    final = node.outputs.training_set
    assert final.count == near_equilibrium.count + first['counts']['labelled'] == last['counts']['training']
    assert final.label == 'training set after active-learning iteration 1'  # `verdi data mlmat list` tells sets apart
    assert last['training_set'] == final.uuid and first['training_set'] == near_equilibrium.uuid
    assert first['counts']['training'] == near_equilibrium.count
    assert first['counts']['queued_hull'] == 3 and 1 <= first['counts']['selected'] <= 6
    assert first['counts']['labelled'] == first['counts']['selected'] + 2 and first['counts']['failed'] == 1
    assert metrics['labels_added'] == first['counts']['labelled'] and metrics['labels_failed'] == 1
    assert last['counts']['labelled'] == 0 and last['calibration'] is None  # the last iteration labels nothing
    for record in iterations:
        stats = record['disagreement']
        assert stats['n_explored'] + stats['n_skipped'] == 2 * 6
        assert 0 <= stats['fraction_above_upper'] <= stats['fraction_above_lower'] <= 1
        assert stats['quantiles']['q05'] <= stats['quantiles']['q50'] <= stats['quantiles']['q95'] <= stats['max']
    assert first['disagreement']['n_candidates'] >= first['counts']['selected']
    calibration = first['calibration']
    assert calibration['n'] == 4 * first['counts']['labelled']  # one value per atom of the labelled frames
    assert calibration['scale'] > 0 and -1 <= calibration['pearson'] <= 1 and len(calibration['bins']) == 5

    # The failure: recorded with its iteration, source and the reference's own message; the rest went in.
    (excluded,) = final.excluded
    assert excluded['formula'] == 'Cu8' and excluded['iteration'] == 1 and excluded['source'] == 'hull'
    assert 'deliberate failure for Cu8' in excluded['reason']
    new_frames = final.get_atoms()[near_equilibrium.count :]
    assert all(len(frame) == 4 for frame in new_frames)
    assert assert_labels_equal_emt(new_frames) == first['counts']['labelled']
    assert {frame.info[ITERATION_KEY] for frame in new_frames} == {1}
    assert sum(frame.info[SOURCE_KEY] == 'hull' for frame in new_frames) == 2
    merge = [child for child in node.called if child.process_label == 'merge_labels']
    assert merge[0].outputs.pending.count == 1  # the failed hull candidate waits for the next labelling
    with node.outputs.learning_curve.open(mode='rb') as handle:
        assert handle.read(8) == b'\x89PNG\r\n\x1a\n'

    # Provenance: iteration 2's members start from iteration 1's potential, member k from member k.
    trainings = sorted(
        (child for child in node.called if child.process_label == 'TrainingWorkChain'), key=lambda n: n.ctime
    )
    assert len(trainings) == 2 and 'initial_potential' not in trainings[0].inputs
    assert trainings[1].inputs.initial_potential.uuid == trainings[0].outputs.potential.uuid
    members = [calc for wrapper in trainings[1].called if wrapper.process_label == 'TrainBaseWorkChain'
               for calc in wrapper.called if calc.process_type == 'aiida.calculations:mlmat.train']  # fmt: skip
    assert sorted(calc.inputs.initial_member.value for calc in members) == [0, 1]
    assert all(calc.outputs.results['warm_start'] for calc in members)
    assert all(calc.inputs.training['epochs'] == OVERRIDES['retrain']['epochs'] for calc in members)
    assert node.outputs.potential.uuid == trainings[-1].outputs.potential.uuid == last['potential']
    assert trainings[-1].inputs.configurations.uuid == final.uuid
    # The test split is the first iteration's in every iteration: no warm-started member trains on it.
    test_split = trainings[0].outputs.splits.test
    assert 'test_split' not in trainings[0].inputs and trainings[1].inputs.test_split.uuid == test_split.uuid
    assert trainings[1].outputs.splits.test.uuid == test_split.uuid
    held = set(query.configuration_keys(test_split))
    for training in trainings:
        for name in ('train', 'validation'):
            assert not held & set(query.configuration_keys(training.outputs.splits[name])), (training.pk, name)
    outside = final.count - test_split.count  # the rest of the final set is split into train and validation whole
    assert trainings[1].outputs.splits.train.count + trainings[1].outputs.splits.validation.count == outside
    explorations = [child for child in node.called if child.process_type == 'aiida.calculations:mlmat.sample']
    assert {calc.inputs.potential.uuid for calc in explorations} == {t.outputs.potential.uuid for t in trainings}
    # ... and the provenance chain names the model each exploration ran with (`mlmat (potential 1a2b3c4d)`)
    steps = {step['uuid']: step for step in query.provenance_chain(node)['calculations']}
    for calc in explorations:
        assert steps[calc.uuid]['calculator']['name'] == 'mlmat'
        assert steps[calc.uuid]['potential'] == calc.inputs.potential.uuid


def test_loop_stops_on_target_error_and_on_converged_fraction(submit_and_await, runs, near_equilibrium):
    """One iteration each: a reachable force-RMSE target stops with target_error; trust bounds above every
    disagreement of a gentle exploration leave no snapshot above the lower bound: converged_fraction."""
    for name, reason in (('target', 'target_error'), ('fraction', 'converged_fraction')):
        node = submit_and_await(runs[name], timeout=900)
        assert node.is_finished_ok, reports(node)
        assert node.outputs.stop_reason.value == reason, reports(node)
        metrics = node.outputs.metrics.get_dict()
        assert metrics['n_iterations'] == 1 and metrics['labels_added'] == 0
        record = metrics['iterations'][0]
        assert record['test']['source'] == 'training_split'
        assert not [child for child in node.called if child.process_label == 'LabelBaseWorkChain']
        assert node.outputs.training_set.uuid == near_equilibrium.uuid
        if name == 'target':
            assert record['test']['forces_rmse'] <= 50.0
        else:
            assert record['disagreement']['fraction_above_lower'] < 0.05 and record['disagreement']['max'] < 2.0


@pytest.mark.parametrize(
    ('overrides', 'message'),
    [
        ({'training': {'ensemble_size': 1}}, 'committee of at least 2'),
        ({'selection': {'lower': 0.5, 'upper': 0.1}}, 'must be smaller than the upper'),
        ({'selection': {'max_per_iteration': 0}}, 'max_per_iteration: must be at least 1'),
        ({'selection': {'lower_quantile': 1.5}}, 'lower_quantile: must lie in [0, 1)'),
        ({'convergence': {'max_iterations': 0}}, 'max_iterations: must be at least 1'),
        ({'convergence': {'target_forces_rmse': -1.0}}, 'must be positive'),
        ({'exploration': {'steps': 5, 'interval': 10}}, 'interval <= steps'),
        ({'exploration': {'strains': [0.9]}}, 'exploration.strains[0]: 0.9 is greater than the maximum of 0.3'),
        ({'exploration': {'stop_disagreement': 0.1}}, 'must not be below the upper trust bound'),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(worker_code, emt, near_equilibrium, seeds, overrides, message):
    """Refused by the protocol's check of the overrides (a ValueError from the builder) or else by the workchain's
    input validation: either way before anything runs."""
    try:
        builder = builder_for(worker_code, near_equilibrium, seeds, emt, overrides)
    except ValueError as exc:
        assert message in str(exc)
        return
    error = ActiveLearningWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    assert error is not None and message in error.message


def test_a_loss_weighting_stress_needs_stress_from_the_set_and_the_reference(worker_code, near_equilibrium, seeds):
    """Refused before the loop starts, not in an iteration's training: a set without stress, or GPAW outside
    plane-wave mode (it gives none), with a loss that weights stress."""
    stress = {'training': {'training': {'stress_weight': 1.0}}}
    no_stress = ConfigurationSetData(
        [with_labels(frame, keep=('energy', 'forces')) for frame in near_equilibrium.get_atoms()]
    ).store()
    builder = builder_for(worker_code, no_stress, seeds, {'name': 'emt'}, stress)
    error = ActiveLearningWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    assert error is not None and 'not every configuration carries stress' in error.message
    fd = {'name': 'gpaw', 'parameters': {'mode': 'fd', 'h': 0.2}}
    builder = builder_for(worker_code, near_equilibrium, seeds, fd, stress)
    error = ActiveLearningWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    assert error is not None and 'GPAW gives stress only in plane-wave mode (`mode` fd' in error.message
    builder = builder_for(worker_code, near_equilibrium, seeds, fd)  # no stress in the loss: fine
    assert ActiveLearningWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True))) is None


def with_labels(frame, keep):
    """``frame`` with only the labels in ``keep``."""
    atoms = frame.copy()
    atoms.calc = SinglePointCalculator(atoms, **{key: frame.calc.results[key] for key in keep})
    return atoms


def test_bad_data_is_refused_before_anything_runs(worker_code, emt, near_equilibrium, seeds):
    unlabelled = ConfigurationSetData([cu(), cu(3.7), cu(3.5)])
    gold = ConfigurationSetData([bulk('Au', 'fcc', a=4.08, cubic=True)])
    cases = [
        ({'training_set': unlabelled}, "not every configuration carries ['energy', 'forces']"),
        ({'seeds': gold}, "seeds: elements ['Au'] are not in the training set"),
        ({'hull_candidates': gold}, "hull_candidates: elements ['Au']"),
        ({'test_set': unlabelled}, 'test_set: every configuration needs energy and forces'),
        ({'test_set': near_equilibrium}, f'of its {near_equilibrium.count} configurations are in the training set too'),
        ({'calculator': orm.Dict({'name': 'mlmat'})}, '`mlmat` is a trained potential, not a reference method'),
        ({'calculator': orm.Dict({'name': 'no-such-code'})}, 'calculator'),
    ]
    for replacement, message in cases:
        builder = builder_for(worker_code, near_equilibrium, seeds, emt)
        for key, value in replacement.items():
            builder[key] = value
        error = ActiveLearningWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
        assert error is not None and message in error.message, (replacement, error)
    # the GPAW worker Code (no torch) labels; training and exploration with it are refused, saying where it goes
    gpaw = orm.InstalledCode(label='mlmat-worker-gpaw', computer=worker_code.computer, filepath_executable='/bin/true')
    builder = builder_for(worker_code, near_equilibrium, seeds, emt)
    builder.label.label.code = gpaw
    assert ActiveLearningWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True))) is None
    builder.training.member.trainer.code = gpaw
    error = ActiveLearningWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    assert error.port == 'inputs.training.member.trainer'  # the members' training job refuses it
    assert error.message.startswith('code: `mlmat-worker-gpaw@localhost` is the GPAW worker Code')
    assert 'the GPAW one samples, labels and relaxes with GPAW' in error.message
    builder = builder_for(worker_code, near_equilibrium, seeds, emt)
    builder.sample.code = gpaw
    error = ActiveLearningWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    assert 'sample.code: `mlmat-worker-gpaw@localhost` is the GPAW worker Code' in error.message
    assert 'the GPAW one as label.label.code' in error.message
    with pytest.raises(ValueError, match='unknown protocol'):
        ActiveLearningWorkChain.get_builder_from_protocol(
            worker_code, near_equilibrium, seeds, calculator=emt, protocol='nope'
        )
    with pytest.raises(ValueError, match=r"calculator: expected a mapping such as \{\"name\": \"emt\"\}, got 'emt'"):
        builder_for(worker_code, near_equilibrium, seeds, 'emt')
    with pytest.raises(ValueError, match=r"overrides: selection: unknown key\(s\) \['bounds'\]"):
        builder_for(worker_code, near_equilibrium, seeds, emt, {'selection': {'bounds': [0.1, 0.2]}})


def test_adaptive_lower_bound_narrows_the_candidates_but_not_the_convergence_statistic(aiida_profile):
    """``selection.lower_quantile``: candidates above the raised bound; ``fraction_above_lower`` keeps ``lower``."""
    from aiida_mlmat.common.constants import DISAGREEMENT_KEY
    from aiida_mlmat.workflows.active_functions import INDEX_KEY, score_exploration

    frames = []
    for index, value in enumerate([0.01, 0.04, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 3.0]):
        frame = cu(3.61 + 0.001 * index)
        frame.info[DISAGREEMENT_KEY] = value
        frames.append(frame)
    explored = ConfigurationSetData(frames)
    fixed = score_exploration(explored, orm.Float(0.05), orm.Float(1.0))
    adaptive = score_exploration(explored, orm.Float(0.05), orm.Float(1.0), orm.Float(0.75))
    assert fixed['candidates'].count == 8 and fixed['statistics']['candidate_lower_bound'] == 0.05
    bound = adaptive['statistics']['candidate_lower_bound']
    assert bound == pytest.approx(np.quantile([0.01, 0.04, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], 0.75))
    kept = [frame.info[INDEX_KEY] for frame in adaptive['candidates'].get_atoms()]
    assert kept == [7, 8, 9] and adaptive['statistics']['n_candidates'] == 3  # 0.6-0.8 eV/Å; 3.0 is above upper
    assert adaptive['statistics']['n_between_bounds'] == fixed['statistics']['n_candidates'] == 8
    for scored in (fixed, adaptive):  # convergence is judged against the fixed lower bound either way
        assert scored['statistics']['fraction_above_lower'] == pytest.approx(9 / 11)
    # With the iteration's label cap as a floor (what the workchain passes), the bound drops to leave 5 candidates.
    floored = score_exploration(explored, orm.Float(0.05), orm.Float(1.0), orm.Float(0.75), orm.Int(5))
    kept = [frame.info[INDEX_KEY] for frame in floored['candidates'].get_atoms()]
    assert kept == [5, 6, 7, 8, 9] and floored['statistics']['n_candidates'] == 5  # 0.4-0.8 eV/Å
    assert floored['statistics']['candidate_lower_bound'] == pytest.approx(0.35)  # halfway between 0.3 and 0.4
    assert floored['statistics']['fraction_above_lower'] == pytest.approx(9 / 11)


def test_protocols_set_the_adaptive_bound_where_labels_are_dear(worker_code, near_equilibrium, seeds, emt):
    """``balanced`` and ``precise`` select above the 75 % quantile of the explored disagreement (the benchmark's
    setting); ``fast`` keeps the fixed bound. Every protocol's builder is valid."""
    quantiles = {}
    for protocol in ('fast', 'balanced', 'precise'):
        builder = ActiveLearningWorkChain.get_builder_from_protocol(
            worker_code, near_equilibrium, seeds, calculator=emt, protocol=protocol
        )
        assert ActiveLearningWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True))) is None, protocol
        selection = builder.selection
        quantiles[protocol] = selection.lower_quantile.value if 'lower_quantile' in selection else None
    assert quantiles == {'fast': None, 'balanced': 0.75, 'precise': 0.75}


def test_potentials_trained_on_follow_warm_starts(submit_and_await, runs, near_equilibrium):
    """A configuration that trained a member of iteration 1 but is in neither split input of the iteration-2 member
    that restarted from it is reported for that member as `warm start` (its weights carry it)."""
    from aiida.common.links import LinkType

    from aiida_mlmat import query

    node = submit_and_await(runs['main'], timeout=900)
    assert node.is_finished_ok, reports(node)
    train_calcs = [
        n for n in node.called_descendants if n.process_type == query.MLMAT_TRAIN and 'potential' in n.outputs
    ]

    def keys(dataset):
        return {query.configuration_key(atoms) for atoms in dataset.get_atoms()}

    def starting_member(calc):
        ensemble = calc.inputs.potential
        members = sorted(
            (link.link_label, link.node.uuid)
            for link in ensemble.creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all()
            if link.link_label.startswith('member_')
        )
        return members[calc.inputs.initial_member.value][1]

    first = {c.outputs.potential.uuid: c for c in train_calcs if 'potential' not in c.inputs}
    second = [c for c in train_calcs if 'potential' in c.inputs]
    assert len(first) == len(second) == 2  # two members, the second iteration's restarted from the first's
    warm_seen = 0
    for atoms in near_equilibrium.get_atoms():
        key = query.configuration_key(atoms)
        hits = {hit.potential.uuid: hit.role for hit in query.potentials_trained_on(atoms)}
        for calc in second:
            start = first[starting_member(calc)]
            if key in keys(calc.inputs.train):
                expected = 'train'
            elif key in keys(start.inputs.train):
                expected = 'warm start'
            elif key in keys(calc.inputs.validation):
                expected = 'validation'
            else:
                expected = None
            assert hits.get(calc.outputs.potential.uuid) == expected
            warm_seen += expected == 'warm start'
    assert warm_seen > 0, 'some configuration reaches an iteration-2 member only through its starting weights'
