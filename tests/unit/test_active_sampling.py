"""Unit tier: the exploration options of the sample task that active learning uses (strain ladder, stop rule)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import bulk

from aiida_mlmat.common.constants import DISAGREEMENT_KEY, METHOD_KEY, SAMPLED_FILE
from aiida_mlmat.worker.__main__ import main
from aiida_mlmat.worker.structures import read_extxyz, write_extxyz
from aiida_mlmat.worker.tasks.sample import SKIPPED_KEY, STRAIN_KEY

pytestmark = pytest.mark.unit


def run_sample(workdir, md):
    write_extxyz(str(workdir / 'structures.extxyz'), [bulk('Cu', 'fcc', a=3.61, cubic=True)])
    data = {'schema_version': 1, 'task': 'sample', 'structures': 'structures.extxyz', 'include_seeds': False, 'md': md}
    (workdir / 'input.json').write_text(json.dumps(data))
    status = main(['sample', str(workdir / 'input.json')])
    results = json.loads((workdir / 'results.json').read_text())
    assert status == 0, results
    return results, read_extxyz(str(workdir / SAMPLED_FILE))


def test_strain_ladder_scales_the_cell_before_md(tmp_path):
    md = {'calculator': {'name': 'emt'}, 'temperatures': [300, 600], 'strains': [-0.02, 0.0, 0.03], 'steps': 4,
          'interval': 2, 'seed': 1}  # fmt: skip
    results, frames = run_sample(tmp_path, md)
    assert results['counts'] == {'md': 3 * 2 * 2}
    volume = 3.61**3
    expected = []
    for strain in (-0.02, 0.0, 0.03):
        for temperature in (300, 600):
            expected += [(f'md:{temperature}K:{strain:+g}', strain)] * 2
    assert [(f.info[METHOD_KEY], f.info[STRAIN_KEY]) for f in frames] == expected
    for frame in frames:
        assert frame.get_volume() == pytest.approx(volume * (1 + frame.info[STRAIN_KEY]) ** 3, rel=1e-10)


def test_trajectories_stop_above_the_disagreement_limit_and_count_what_they_skipped(tmp_path):
    """An untrained two-member ensemble disagrees everywhere: each trajectory ends at its first snapshot and
    records the 3 snapshots it did not make; without the limit every snapshot is made."""
    from aiida_mlmat.ml.model import build_model, default_config, save_model

    config = {**default_config(['Cu']), 'hidden': [8],
              'descriptor': {'kind': 'chebyshev', 'rcut': 4.0, 'n_radial': 4, 'n_angular': 2}}  # fmt: skip
    (tmp_path / 'potential').mkdir()
    for k in range(2):
        torch.manual_seed(k)
        save_model(build_model(config), str(tmp_path / 'potential' / f'member_{k}.pt'))
    md = {'calculator': {'name': 'mlmat'}, 'temperatures': [300, 900], 'steps': 4, 'interval': 1, 'seed': 2,
          'timestep': 1.0}  # fmt: skip
    _, free = run_sample(tmp_path, md)
    assert len(free) == 8 and all(SKIPPED_KEY not in frame.info for frame in free)
    disagreements = np.array([frame.info[DISAGREEMENT_KEY] for frame in free])
    assert np.all(disagreements > 0)
    limit = float(disagreements.min()) / 2
    _, stopped = run_sample(tmp_path, {**md, 'stop_disagreement': limit})
    assert len(stopped) == 2
    assert [frame.info[SKIPPED_KEY] for frame in stopped] == [3, 3]
    assert [frame.info[METHOD_KEY] for frame in stopped] == ['md:300K', 'md:900K']
    # A limit above every disagreement changes nothing.
    _, unchanged = run_sample(tmp_path, {**md, 'stop_disagreement': float(disagreements.max()) * 10})
    assert len(unchanged) == 8
    np.testing.assert_allclose(unchanged[-1].positions, free[-1].positions)


def test_bad_exploration_options_are_refused():
    from aiida_mlmat.worker.schema import validate_input

    base = {'schema_version': 1, 'task': 'sample', 'structures': 's.extxyz',
            'md': {'calculator': {'name': 'emt'}, 'temperatures': [300], 'steps': 2, 'interval': 1}}  # fmt: skip
    validate_input('sample', base)
    with pytest.raises(ValueError, match=r'md\.strains'):
        validate_input('sample', {**base, 'md': {**base['md'], 'strains': [0.5]}})
    with pytest.raises(ValueError, match=r'md\.stop_disagreement'):
        validate_input('sample', {**base, 'md': {**base['md'], 'stop_disagreement': 0}})
