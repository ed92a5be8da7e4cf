"""Unit tier: the pipeline YAML is validated with messages that name the offending key."""

from __future__ import annotations

import pytest

from aiida_mlmat.workflows.pipeline_config import DEFAULTS, ConfigError, load_config, validate_config

pytestmark = pytest.mark.unit


def test_example_config_is_valid_and_defaults_fill_the_rest():
    config = load_config('examples/pipeline-cuau-emt.yaml')
    assert config['elements'] == ['Cu', 'Au']
    assert config['reference']['calculator'] == {'name': 'emt', 'parameters': {}}
    minimal = validate_config({'elements': ['Cu', 'Au']})
    assert minimal['training'] == DEFAULTS['training'] and minimal['screening']['verify_top'] == 3
    # one element: no alloy decorations to screen, so screening (on by default) must be switched off
    with pytest.raises(ConfigError, match=r'screening: the generated candidates are decorations of two or more'):
        validate_config({'elements': ['Cu']})
    assert validate_config({'elements': ['Cu'], 'screening': {'enabled': False}})['elements'] == ['Cu']


def test_active_learning_example_is_valid():
    config = load_config('examples/active-learning-cuau-emt.yaml')
    assert config['screening']['enabled'] is False and config['active_learning']['max_iterations'] == 3
    assert config['active_learning']['overrides']['selection']['lower_quantile'] == 0.75


@pytest.mark.parametrize(
    ('config', 'message'),
    [
        ({'elements': ['Cu'], 'trainng': {}}, r"<top level>: unknown key\(s\) \['trainng'\]"),
        ({'elements': ['Cu'], 'training': {'epochs': 3}}, r"training: unknown key\(s\) \['epochs'\]"),
        ({'elements': ['Cu'], 'screening': {'verify_top': 'three'}}, "screening.verify_top: 'three' is not of type"),
        ({'elements': ['Cu'], 'training': {'ensemble': 1}}, 'training.ensemble: 1 is less than the minimum of 2'),
        ({'elements': ['cu']}, 'elements.0'),
        ({'reference': {}}, "'elements' is a required property"),
        ({'elements': ['Cu'], 'reference': {'calculator': {'name': 'emt', 'params': {}}}}, 'reference.calculator'),
        # what the schema cannot see, refused before the pipeline's first stage runs
        ({'elements': ['Cu', 'Xx']}, 'elements: unknown element `Xx`'),
        ({'elements': ['Cu', 'Fe']}, r"reference.calculator: `emt` cannot treat the elements \['Fe'\]"),
        ({'elements': ['Cu'], 'reference': {'calculator': {'name': 'nosuch'}}}, 'unknown calculator `nosuch`'),
        ({'elements': ['Cu'], 'reference': {'calculator': {'name': 'mlmat'}}}, '`mlmat` is a trained potential'),
        (
            {'elements': ['Cu'], 'reference': {'overrides': {'nonsense_key': 1}}},
            r"reference.overrides: <top level>: unknown key\(s\) \['nonsense_key'\]",
        ),
        (
            {'elements': ['Cu'], 'active_learning': {'overrides': {'selection': {'lower': 0.9, 'upper': 0.1}}}},
            r'active_learning.overrides: selection: the lower trust bound \(0.9 eV/Å\) must be smaller',
        ),
        (
            {'elements': ['Cu'], 'active_learning': {'overrides': {'training': {'training': {'epochs': -5}}}}},
            'active_learning.overrides: training.training.epochs: -5 is less than the minimum of 1',
        ),
        (
            {'elements': ['Cu'], 'active_learning': {'overrides': {'exploration': {'temperatures': [300, '900']}}}},
            r"active_learning.overrides: exploration.temperatures\[1\]: '900' is not of type 'number'",
        ),
        (
            {'elements': ['Cu'], 'training': {'overrides': {'training': {'epochz': 2}}}},
            r"training.overrides: training: unknown key\(s\) \['epochz'\]",
        ),
        # a labelled set too small to split, and a model the worker would refuse, both before the first stage
        ({'elements': ['Cu'], 'reference': {'select': 2}}, 'reference.select: 2 is less than the minimum of 3'),
        (
            {'elements': ['Cu'], 'reference': {'overrides': {'select': {'n': 1}}}},
            'reference: selecting 1 configurations leaves too few to split into train, validation and test',
        ),
        (
            {'elements': ['Cu', 'Au'], 'reference': {'overrides': {'select': {'method': 'cur'}}}},
            r'reference.overrides.select: method has no effect without select.n, .* \(reference.select\)',
        ),
        (
            {
                'elements': ['Cu'],
                'reference': {'select': 10, 'overrides': {'select': {'descriptor': {'kind': 'soap'}}}},
            },
            'reference.overrides.select.descriptor: unknown descriptor kind `soap`',
        ),
        (
            {'elements': ['Cu', 'Au'], 'reference': {'select': 10, 'overrides': {'select': {'descriptor': 'acsf'}}}},
            'reference.overrides.select.descriptor: expected a mapping',
        ),
        (
            {
                'elements': ['Cu'],
                'reference': {'select': 10, 'overrides': {'select': {'descriptor': {'n_radial': 99}}}},
            },
            'reference.overrides.select.descriptor.n_radial: 99 is greater than the maximum',
        ),
        (
            {'elements': ['Cu', 'Au'], 'reference': {'overrides': {'select': {'n': 9, 'method': 'kmeans'}}}},
            'reference.overrides.select.method: `kmeans` is not one of fps, cur',
        ),
        (
            {'elements': ['Cu'], 'training': {'ensemble': 1000}},
            'training.ensemble: 1000 is greater than the maximum of 64',
        ),
        (
            {'elements': ['Cu'], 'training': {'overrides': {'model': {'hidden': []}}}},
            r'training.overrides: model.hidden: \[\] should be non-empty',
        ),
        (
            {'elements': ['Cu'], 'active_learning': {'overrides': {'training': {'ensemble_size': 10**9}}}},
            'active_learning.overrides: training.ensemble_size: must be from 1 to 64',
        ),
    ],
)
def test_bad_configs_name_the_key(config, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_a_selection_of_zero_or_null_is_no_selection():
    for select in ({'n': 0}, {'n': None}, {}):
        config = validate_config({'elements': ['Cu', 'Au'], 'reference': {'overrides': {'select': select}}})
        assert not config['reference'].get('select')


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match='no such configuration file'):
        load_config(tmp_path / 'nope.yaml')
    broken = tmp_path / 'broken.yaml'
    broken.write_text('elements: [Cu\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_config(broken)


def test_binary_file_is_refused_as_not_text(tmp_path):
    binary = tmp_path / 'binary.yaml'
    binary.write_bytes(b'elements: [Cu]\n\xff\xfe\x00\xd0\x80')
    with pytest.raises(ConfigError, match=r'not a text \(UTF-8\) YAML file'):
        load_config(binary)
    broken = tmp_path / 'broken.yaml'
    broken.write_text('elements: [Cu\n')
    with pytest.raises(ConfigError, match=r'in ".*broken\.yaml", line 1'):  # names the file
        load_config(broken)


def test_a_key_given_twice_is_refused(tmp_path):
    """PyYAML would keep the last `elements` silently; the configuration names the key and the line instead."""
    twice = tmp_path / 'twice.yaml'
    twice.write_text('elements: [Cu, Au]\ntraining: {ensemble: 2}\nelements: [Cu]\n')
    with pytest.raises(ConfigError, match=r'the key `elements` is given twice\n  in ".*twice\.yaml", line 3'):
        load_config(twice)


def test_yaml_merge_keys_work_and_unhashable_keys_are_refused(tmp_path):
    """`<<: *anchor` merges as YAML defines it; a list used as a key is a clear error."""
    merged = tmp_path / 'merged.yaml'
    merged.write_text(
        'elements: [Cu, Au]\n'
        'training: {ensemble: 2, overrides: {training: &tr {epochs: 5, batch_size: 4}}}\n'
        'active_learning: {overrides: {retrain: {<<: *tr, epochs: 3}}}\n'
    )
    config = load_config(merged)
    assert config['active_learning']['overrides']['retrain'] == {'epochs': 3, 'batch_size': 4}
    listed = tmp_path / 'listed.yaml'
    listed.write_text('elements: [Cu]\n? [a, b]\n: 1\n')
    with pytest.raises(ConfigError, match='a key must be a plain value'):
        load_config(listed)


def test_the_aiida_ase_labeller_needs_its_code(aiida_profile):
    """A pipeline whose reference labels with aiida-ase is refused at submission without the aiida-ase Code (before,
    it failed after the sampling); `mlmat run` passes the Code `mlmat setup` registers."""
    from aiida import orm

    from aiida_mlmat.workflows.pipeline import validate_inputs

    config = orm.Dict(validate_config({'elements': ['Cu', 'Au'], 'reference': {'labeller': 'aiida-ase'}}))
    assert validate_inputs({'config': config}) == (
        'ase_code: the reference labeller `aiida-ase` needs the Code of a Python with ASE (ase.ase)'
    )
    assert validate_inputs({'config': config, 'ase_code': object()}) is None
    assert validate_inputs({'config': orm.Dict(validate_config({'elements': ['Cu', 'Au']}))}) is None


def test_a_code_names_the_worker_and_its_computer_follows():
    """`code:` names the worker Code; without `computer:` the Computer is the Code's (`mlmat run` fills it in),
    with one it is kept (and `mlmat run` refuses a Code on another); a non-string code is refused by name."""
    merged = validate_config({'elements': ['Cu', 'Au'], 'code': 'mlmat-worker-gpu@slurm-ssh'})
    assert merged['code'] == 'mlmat-worker-gpu@slurm-ssh' and merged['computer'] is None
    merged = validate_config({'elements': ['Cu', 'Au'], 'code': 'mlmat-worker-gpu', 'computer': 'slurm-ssh'})
    assert merged['computer'] == 'slurm-ssh'
    assert 'code' not in validate_config({'elements': ['Cu', 'Au']})
    assert validate_config({'elements': ['Cu', 'Au']})['computer'] == DEFAULTS['computer']
    with pytest.raises(ConfigError, match='code'):
        validate_config({'elements': ['Cu', 'Au'], 'code': 3})


def test_every_setting_of_the_yaml_counts_once():
    """An override of a setting a section key also sets wins when the key is silent and is refused when they
    disagree; with active learning on, the training section's overrides reach the loop's training."""
    base = {'elements': ['Cu', 'Au']}
    config = validate_config({**base, 'active_learning': {'overrides': {'convergence': {'max_iterations': 1}}}})
    assert config['active_learning']['max_iterations'] == 1  # not the section default 2
    config = validate_config(
        {**base, 'active_learning': {'overrides': {'training': {'ensemble_size': 3, 'training': {'epochs': 5}}}}}
    )
    assert config['training']['ensemble'] == 3
    config = validate_config({**base, 'training': {'overrides': {'training': {'epochs': 3}, 'test_fraction': 0.25}}})
    training = config['active_learning']['overrides']['training']
    assert training['training'] == {'epochs': 3} and training['test_fraction'] == 0.25
    config = validate_config(
        {
            **base,
            'training': {'overrides': {'training': {'epochs': 3, 'batch_size': 2}}},
            'active_learning': {'overrides': {'training': {'training': {'epochs': 7}}}},
        }
    )
    assert config['active_learning']['overrides']['training']['training'] == {'epochs': 7, 'batch_size': 2}
    config = validate_config({**base, 'training': {'ensemble': 4, 'overrides': {'ensemble_size': 4}}})
    assert config['training']['ensemble'] == 4
    # the example (training.protocol equal to the loop's) stays valid
    assert load_config('examples/pipeline-cuau-emt.yaml')['active_learning']['max_iterations'] == 2


@pytest.mark.parametrize(
    ('config', 'message'),
    [
        (
            {'active_learning': {'max_iterations': 3, 'overrides': {'convergence': {'max_iterations': 1}}}},
            'active_learning: max_iterations 3 and overrides.convergence.max_iterations 1 disagree; give one',
        ),
        (  # written twice, the default value included: a contradiction, not "not given"
            {'active_learning': {'max_iterations': 2, 'overrides': {'convergence': {'max_iterations': 3}}}},
            'active_learning: max_iterations 2 and overrides.convergence.max_iterations 3 disagree; give one',
        ),
        (
            {'training': {'ensemble': 2}, 'active_learning': {'overrides': {'training': {'ensemble_size': 3}}}},
            'the ensemble size is given twice with different values: training.ensemble 2, '
            'active_learning.overrides.training.ensemble_size 3',
        ),
        (
            {'training': {'ensemble': 4}, 'active_learning': {'overrides': {'training': {'ensemble_size': 3}}}},
            'the ensemble size is given twice with different values: training.ensemble 4, '
            'active_learning.overrides.training.ensemble_size 3',
        ),
        ({'training': {'gpus': 1}}, 'training.gpus: not used while active learning trains the ensemble'),
        (
            {'training': {'protocol': 'balanced'}},
            'training.protocol balanced: active learning trains with active_learning.protocol (fast)',
        ),
        (
            {'active_learning': {'enabled': False, 'hull_aware': True}},
            'active_learning.hull_aware: not used with `active_learning: {enabled: false}`',
        ),
        (
            {'active_learning': {'hull_aware': True}, 'screening': {'enabled': False}},
            'active_learning.hull_aware: needs the screening stage',
        ),
    ],
)
def test_settings_that_would_be_ignored_or_disagree_are_refused(config, message):
    with pytest.raises(ConfigError) as info:
        validate_config({'elements': ['Cu', 'Au'], **config})
    assert message in str(info.value)


def test_training_settings_apply_without_active_learning():
    config = validate_config(
        {
            'elements': ['Cu', 'Au'],
            'training': {'protocol': 'balanced', 'gpus': 1},
            'active_learning': {'enabled': False},
        }
    )
    assert config['training']['protocol'] == 'balanced' and config['training']['gpus'] == 1


@pytest.mark.parametrize(
    'config',
    [
        {'active_learning': {'enabled': False}},
        {'active_learning': {'protocol': 'balanced'}},
        {'active_learning': {'overrides': {'convergence': {'max_iterations': 1}}}},
        {'training': {'ensemble': 3, 'overrides': {'training': {'epochs': 4}}}},
        {'active_learning': {'enabled': False}, 'training': {'protocol': 'balanced', 'gpus': 1}},
    ],
)
def test_validating_twice_gives_the_same_configuration(config):
    """`mlmat run` submits the validated configuration, and the workflow validates it again."""
    once = validate_config({'elements': ['Cu', 'Au'], **config})
    assert validate_config(once) == once


@pytest.mark.parametrize(
    ('config', 'message'),
    [
        ({'active_learning': {'overrides': {'training': 3}}}, 'active_learning.overrides.training: must be a mapping'),
        (
            {'active_learning': {'overrides': {'convergence': [1]}}},
            'active_learning.overrides.convergence: must be a mapping',
        ),
        ({'training': {'overrides': {'training': 'fast'}}}, 'training.overrides.training: must be a mapping'),
    ],
)
def test_nested_overrides_that_are_not_mappings_are_refused(config, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({'elements': ['Cu', 'Au'], **config})
