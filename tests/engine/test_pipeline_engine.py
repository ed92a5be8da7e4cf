"""Engine tier: the whole loop (``mlmat.pipeline``) with tiny settings, ``mlmat run`` and ``mlmat report``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from aiida import orm
from aiida.common.links import LinkType
from click.testing import CliRunner

from aiida_mlmat.cli.main import cli
from aiida_mlmat.workflows.pipeline import PipelineWorkChain
from aiida_mlmat.workflows.pipeline_config import validate_config

pytestmark = pytest.mark.engine

TINY_MODEL = {'hidden': [8, 8], 'descriptor': {'kind': 'chebyshev', 'rcut': 4.5, 'n_radial': 6, 'n_angular': 3}}
TINY = {
    'elements': ['Cu', 'Au'],
    'reference': {
        'calculator': {'name': 'emt'},
        'overrides': {'sample': {'rattle': {'count': 2, 'stdev': 0.05}, 'strain': {'count': 1, 'max_strain': 0.02}}},
    },
    'training': {'ensemble': 2, 'overrides': {'model': TINY_MODEL, 'training': {'epochs': 8, 'batch_size': 8}}},
    'active_learning': {
        'max_iterations': 1,
        'overrides': {
            'training': {'model': TINY_MODEL, 'training': {'epochs': 8, 'batch_size': 8}},
            'exploration': {'temperatures': [600], 'strains': [0.0], 'steps': 10, 'interval': 5},
            'selection': {'max_per_iteration': 4},
        },
    },
    'screening': {'generate': {'max_atoms': 2}, 'verify_top': 2, 'relax': {'max_steps': 60}},
}


def test_pipeline_runs_every_stage_and_reports(submit_and_await, worker_code, tmp_path):
    config = validate_config(TINY)
    node = submit_and_await(PipelineWorkChain, config=orm.Dict(config), code=worker_code, timeout=900)
    assert node.is_finished_ok, node.exit_message
    labels = {link.link_label for link in node.base.links.get_outgoing().all()}
    assert {'reference', 'active_learning', 'screening'} <= labels
    summary = node.outputs.summary.get_dict()
    assert summary['reference']['n_configurations'] == node.outputs.dataset.count > 0
    assert summary['active_learning']['stop_reason'] == 'max_iterations'
    assert summary['active_learning']['n_iterations'] == 1
    screening = summary['screening']
    assert screening['n_screened'] > 0 and screening['verification']['n'] == 2
    assert node.outputs.potential.n_members == 2
    # every step is labelled by its path of call links, so `verdi process list` tells steps and iterations apart
    labels = {child.label for child in node.called_descendants}
    assert {'reference', 'active_learning', 'active_learning/training_1', 'screening'} <= labels
    assert 'active_learning/training_1/member_0/iteration_01' in labels  # the member's TrainCalculation
    assert all(child.label for child in node.called_descendants if child.process_label != 'build_seed_set')
    # units travel with the numbers: the summary, the screening summary and every candidate node
    assert summary['units'] == {'energy': 'eV/atom', 'forces': 'eV/Å', 'stress': 'eV/Å^3', 'e_above_hull': 'eV/atom'}
    hull = node.base.links.get_outgoing(link_type=LinkType.CALL_WORK, link_label_filter='screening').one().node
    assert hull.outputs.summary['units']['verification.mae'] == 'eV/atom'
    candidates = list(hull.outputs.candidates.values())
    assert candidates and all(c.base.attributes.get('units')['e_above_hull'] == 'eV/atom' for c in candidates)
    # the reference verification is in a candidate's provenance exactly when that candidate was verified
    verified = [c for c in candidates if 'reference_e_above_hull' in c.base.attributes.all]
    assert len(verified) == 2 and len(candidates) > 2
    for candidate in candidates:
        inputs = {link.link_label for link in candidate.creator.base.links.get_incoming().all()}
        assert ('verification' in inputs) == (candidate in verified), candidate.name
    # One iteration stops at max_iterations before labelling: the loop's set is the reference data, exactly.
    assert summary['active_learning']['labels_added'] == 0
    assert node.outputs.training_set.count == node.outputs.dataset.count + summary['active_learning']['labels_added']

    result = CliRunner().invoke(cli, ['report', node.uuid, '--out', str(tmp_path / 'report'), '--json'])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    text = (tmp_path / 'report' / 'summary.md').read_text()
    assert 'PipelineWorkChain' in text and 'Headline figures' in text
    # per stage: wall time (s) and the calculation jobs under it; the stages run one after another and hold every job
    record = json.loads((tmp_path / 'report' / 'summary.json').read_text())
    stages, total = {stage['step']: stage for stage in record['stages']}, record['total']
    assert sum(stage['n_calcjobs'] for stage in record['stages']) == total['n_calcjobs'] > 0
    assert stages['reference']['n_calcjobs'] >= 2 and stages['screening']['n_calcjobs'] >= 2  # relaxation, verification
    assert total['n_calcjobs_failed'] == 0 and all(stage['state'] == 'finished' for stage in record['stages'])
    walls = [stage['wall_s'] for stage in record['stages']]
    assert min(walls) >= 0 and stages['active_learning']['wall_s'] > 0 and sum(walls) <= total['wall_s'] + 1
    assert f'{total["n_calcjobs"]} calculation jobs (0 failed)' in text
    rows = [line.split(' | ')[:2] for line in text.splitlines() if line.startswith('| ') and '<' in line]
    steps = {step.lstrip('| '): process.split('<')[0] for step, process in rows}
    assert steps['reference'] == 'ReferenceWorkChain' and steps['active_learning'] == 'ActiveLearningWorkChain'
    assert steps['screening'] == 'HullWorkChain'  # the CALL link's label, whatever the order of the other links
    names = [path.split('/')[-1] for path in data['plots']]
    assert names[0] == '00-ActiveLearningWorkChain-active_learning-active-learning-curve.png'
    assert any(name.endswith('-TrainingWorkChain-training_1-parity-forces.png') for name in names)
    assert names[-1].endswith('-HullWorkChain-screening-hull.png')  # processes in creation order, not PK order
    assert all((tmp_path / 'report' / path.split('/')[-1]).read_bytes()[:4] == b'\x89PNG' for path in data['plots'])
    # the screening table comes along, and every active-learning iteration has its row
    (table,) = data['tables']
    assert table.endswith('-HullWorkChain-screening-screening.csv') and f'({table.split("/")[-1]})' in text
    rows = Path(table).read_text().splitlines()
    assert 'e_above_hull' in rows[0] and len(rows) == 1 + screening['n_screened'] + screening.get('n_failed', 0)
    assert '## Active learning: every iteration' in text and '| 1 | ' in text
    assert not any('| None' in line for line in text.splitlines() if line.startswith('| '))  # a missing figure: n/a
    # a report written again into the same folder replaces the earlier one's files, no other file
    (tmp_path / 'report' / 'notes.txt').write_text('mine')
    loop = node.base.links.get_outgoing(link_type=LinkType.CALL_WORK, link_label_filter='active_learning').one().node
    again = CliRunner().invoke(cli, ['report', str(loop.pk), '--out', str(tmp_path / 'report'), '--json'])
    assert again.exit_code == 0, again.output
    left = sorted(path.name for path in (tmp_path / 'report').iterdir())
    assert 'notes.txt' in left and not any('HullWorkChain' in name for name in left)
    loop_summary = json.loads((tmp_path / 'report' / 'summary.json').read_text())['summary']
    assert loop_summary['active_learning']['stop_reason'] == 'max_iterations'
    assert loop_summary['potential_metrics']['forces_rmse'] > 0


def test_run_refuses_a_bad_configuration_naming_the_key(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text(yaml.safe_dump({'elements': ['Cu', 'Au'], 'screening': {'verify_topp': 3}}))
    before = orm.QueryBuilder().append(orm.Node).count()
    result = CliRunner().invoke(cli, ['run', str(bad), '--json'])
    assert result.exit_code == 2
    assert "screening: unknown key(s) ['verify_topp']" in result.output
    assert orm.QueryBuilder().append(orm.Node).count() == before
