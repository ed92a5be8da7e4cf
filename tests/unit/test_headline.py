"""The headline figures `mlmat run` prints (what the README's main job shows a scientist first)."""

import pytest

from aiida_mlmat.cli.pipeline import headline
from aiida_mlmat.hull.metrics import describe_verification, discovery_metrics

pytestmark = pytest.mark.unit


def test_headline_names_every_stage_with_units():
    summary = {
        'reference': {'n_configurations': 80, 'n_excluded': 1},
        'active_learning': {'n_iterations': 2, 'stop_reason': 'max_iterations'},
        'potential_metrics': {'forces_rmse': 0.091891, 'energy_rmse_per_atom': 0.0412137},
        'screening': {'n_screened': 58, 'n_stable': 1, 'n_uncertain': 4, 'n_failed': 0},
    }
    assert headline(summary) == [
        'reference set: 80 configurations, 1 excluded',
        'active learning: 2 iterations, stopped by max_iterations',
        'potential (test split): force RMSE 0.09189 eV/Å, energy RMSE 0.04121 eV/atom',
        'screening: 58 candidates, 1 stable, 4 uncertain (on the hull for some members, not most), 0 failed',
    ]
    summary['screening']['n_uncertain'] = 0
    assert headline(summary)[-1] == 'screening: 58 candidates, 1 stable, 0 failed'


def test_describe_verification_counts_what_was_confirmed():
    # model: a and b on the hull, c above; reference: a on it, b and c above
    metrics = discovery_metrics({'a': 0.0, 'b': 0.0, 'c': 0.03}, {'a': 0.0, 'b': 0.02, 'c': 0.05}, threshold=1e-6)
    assert describe_verification(metrics) == (
        'verification of the top 3 by the reference: e_above_hull MAE 0.01333 eV/atom; '
        'the model puts 2 on their hull, the reference confirms 1 (precision 0.5); recall 1, F1 0.6667'
    )
    # nothing stable by the reference among them: recall is undefined, and said so instead of "None"
    none_stable = discovery_metrics([0.0, 0.01], [0.02, 0.03], threshold=1e-6)
    line = describe_verification(none_stable)
    assert 'the model puts 1 on their hull, the reference confirms 0 (precision 0)' in line
    assert line.endswith('none stable by the reference')
    assert 'None' not in line
    # nothing on the model's hull of the checked entries, one stable by the reference: recall 0, F1 undefined
    missed = describe_verification(discovery_metrics([0.01, 0.02], [0.0, 0.03], threshold=1e-6))
    assert missed.endswith('the model puts none on their hull; recall 0')
    assert 'None' not in missed
    assert 'MAE n/a eV/atom' in describe_verification({'n': 0, 'mae': None, 'tp': 0, 'fp': 0, 'recall': None})
    assert headline({'screening': {'n_screened': 2, 'n_stable': 0, 'n_failed': 0, 'verification': metrics}})[1] == (
        describe_verification(metrics)
    )


def test_stage_wall_time_ends_with_the_process_not_a_later_write(aiida_profile):
    """A report written days after a run must not count the days: ``mtime`` moves with any later write (an extra,
    a label), so a stage's end is its last output, called process or log entry."""
    import time

    from aiida import orm
    from aiida.engine import calcfunction

    from aiida_mlmat.cli.pipeline import _wall_s

    @calcfunction
    def slow(x: orm.Int) -> orm.Int:
        time.sleep(0.3)
        return orm.Int(x.value + 1)

    _, node = slow.run_get_node(orm.Int(1))
    before = _wall_s(node)
    time.sleep(1.2)
    node.base.extras.set('tag', 'later')
    node.label = 'relabelled'
    assert (node.mtime - node.ctime).total_seconds() > 1.2
    assert 0.3 <= _wall_s(node) == before < 1.0


@pytest.mark.parametrize(
    ('value', 'cell'),
    [(None, 'n/a'), (0.05, '0.0500'), (0.04804, '0.0480'), (0.0, '0.0000'), (3e-6, '3.000e-06'), (7, '7'), ('x', 'x')],
)
def test_report_table_cells_line_up_and_say_n_a_for_a_missing_figure(value, cell):
    """Figures in a column have the same decimals; a figure there is none of is `n/a`, not Python's `None`."""
    from aiida_mlmat.cli.pipeline import _cell

    assert _cell(value) == cell
