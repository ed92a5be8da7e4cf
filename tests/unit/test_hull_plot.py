"""Hull plots (binary, ternary, more) are PNG files; the table has the documented columns."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from aiida_mlmat.hull.phase import ensemble_hull, hull_results
from aiida_mlmat.hull.plot import COLUMNS, lower_hull, plot_hull, write_table

pytestmark = pytest.mark.unit

PNG = b'\x89PNG\r\n\x1a\n'

REFERENCES = {'Cu': ({'Cu': 1}, -4.0), 'Au': ({'Au': 1}, -3.0), 'CuAu-known': ({'Cu': 1, 'Au': 1}, -7.6)}


def total(counts, e_form):
    energies = {'Cu': -4.0, 'Au': -3.0, 'Ag': -2.5}
    return sum(energies[el] * n for el, n in counts.items()) + sum(counts.values()) * e_form


@pytest.fixture
def binary_results():
    candidates = {
        'fcc-CuAu-0': ({'Cu': 1, 'Au': 1}, [total({'Cu': 1, 'Au': 1}, e) for e in (-0.5, -0.45)]),
        'fcc-Cu3Au-0': ({'Cu': 3, 'Au': 1}, [total({'Cu': 3, 'Au': 1}, e) for e in (-0.2, -0.3)]),
        'fcc-CuAu3-0': ({'Cu': 1, 'Au': 3}, [total({'Cu': 1, 'Au': 3}, e) for e in (-0.1, -0.12)]),
        'bad': ({'Cu': 1, 'Fe': 1}, [-8.0, -8.0]),
    }
    references = {name: (c, [e, e]) for name, (c, e) in REFERENCES.items()}
    return ensemble_hull(candidates, references, 1e-6)


def is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG)


def test_binary_plot(tmp_path, binary_results):
    path = tmp_path / 'hull.png'
    plot_hull(binary_results, REFERENCES, str(path), ['Cu', 'Au'])
    assert is_png(path)
    # the summary form the workflow stores: formula and energy per atom
    summary = {name: {'formula': 'CuAu' if '-' in name else name, 'energy_per_atom': e / sum(c.values())}
               for name, (c, e) in REFERENCES.items()}  # fmt: skip
    other = tmp_path / 'sub' / 'hull-summary.png'
    plot_hull(binary_results, summary, other, ['Cu', 'Au'])
    assert is_png(other)


def test_ternary_plot(tmp_path):
    references = {'Cu': ({'Cu': 1}, -4.0), 'Au': ({'Au': 1}, -3.0), 'Ag': ({'Ag': 1}, -2.5)}
    candidates = {
        'CuAuAg': ({'Cu': 1, 'Au': 1, 'Ag': 1}, total({'Cu': 1, 'Au': 1, 'Ag': 1}, -0.2)),
        'Cu2AuAg': ({'Cu': 2, 'Au': 1, 'Ag': 1}, total({'Cu': 2, 'Au': 1, 'Ag': 1}, -0.1)),
        'CuAu': ({'Cu': 1, 'Au': 1}, total({'Cu': 1, 'Au': 1}, -0.15)),
        'AuAg3': ({'Au': 1, 'Ag': 3}, total({'Au': 1, 'Ag': 3}, 0.05)),
    }
    results = hull_results(candidates, references)
    path = tmp_path / 'ternary.png'
    plot_hull(results, references, str(path), ['Cu', 'Au', 'Ag'])
    assert is_png(path)


def test_other_systems_plot(tmp_path, binary_results):
    path = tmp_path / 'bars.png'
    plot_hull(binary_results, REFERENCES, str(path), ['Cu', 'Au', 'Ag', 'Pd'])
    assert is_png(path)
    empty = tmp_path / 'empty.png'
    plot_hull({}, REFERENCES, str(empty), ['Cu', 'Au'])
    assert is_png(empty)


def test_lower_hull():
    points = [(0.0, 0.0), (0.5, -0.5), (0.25, -0.2), (0.75, -0.3), (1.0, 0.0), (0.5, -0.1)]
    assert lower_hull(points) == [(0.0, 0.0), (0.5, -0.5), (0.75, -0.3), (1.0, 0.0)]


def test_table(tmp_path, binary_results):
    path = tmp_path / 'table.csv'
    write_table(binary_results, str(path))
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [row['name'] for row in rows] == ['fcc-CuAu-0', 'fcc-Cu3Au-0', 'fcc-CuAu3-0', 'bad']
    assert rows[-1]['status'] == 'failed'
    assert 'Fe' in rows[-1]['reason']
    assert rows[-1]['e_above_hull'] == ''
    first = rows[0]
    assert first['stable'] == 'True'
    assert float(first['p_stable']) == 1.0
    assert float(first['e_form_per_atom']) == pytest.approx(-0.475)
    # Cu3Au: 0.05 above the hull of member 0, on the hull of member 1; CuAu3: 0.15 and 0.105 above
    assert float(rows[1]['e_above_hull']) == pytest.approx(0.025)
    assert float(rows[1]['e_above_hull_std']) == pytest.approx(0.025)
    assert float(rows[1]['p_stable']) == 0.5
    assert float(rows[2]['e_above_hull']) == pytest.approx(0.1275)
    assert rows[2]['stable'] == 'False'


def test_table_with_reference_columns(tmp_path, binary_results):
    rows = {name: dict(entry) for name, entry in binary_results.items()}
    rows['fcc-CuAu-0'].update({'reference_e_above_hull': 0.0, 'reference_e_form_per_atom': -0.48, 'converged': True})
    path = tmp_path / 'table.csv'
    write_table(rows, path)
    with path.open() as handle:
        reader = csv.DictReader(handle)
        records = list(reader)
    assert reader.fieldnames is not None
    assert {'reference_e_above_hull', 'reference_e_form_per_atom', 'converged'} <= set(reader.fieldnames)
    assert records[0]['reference_e_form_per_atom'] == '-0.48'
    assert records[1]['reference_e_above_hull'] == ''


def test_binary_plot_tells_stable_uncertain_and_above_hull_apart(binary_results):
    """A 2-member tie (Cu3Au: one member puts it on the hull) is drawn and tagged as uncertain, not as stable."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from aiida_mlmat.hull.plot import _binary, _composition, stability_class

    kinds = {name: stability_class(entry) for name, entry in binary_results.items() if entry.get('status') == 'ok'}
    assert binary_results['fcc-Cu3Au-0']['p_stable'] == 0.5
    assert kinds == {'fcc-CuAu-0': 'stable', 'fcc-Cu3Au-0': 'uncertain', 'fcc-CuAu3-0': 'above hull'}
    fig, ax = plt.subplots()
    _binary(ax, {name: binary_results[name] for name in kinds}, REFERENCES, ['Cu', 'Au'])
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    line = next(item for item in ax.get_lines() if item.get_label() == 'hull of the mean energies')
    hull_x, hull_y = line.get_data()
    plt.close(fig)
    assert sorted(labels) == [
        'above hull',
        'hull of the mean energies',
        'references',
        'stable',
        'uncertain (some members: on the hull)',
    ]
    # no drawn point lies below the drawn hull: it is the hull of the points drawn (ensemble means)
    for name in kinds:
        composition = _composition(binary_results[name])
        x = composition.get('Au', 0) / sum(composition.values())
        assert binary_results[name]['e_form_per_atom'] >= float(np.interp(x, hull_x, hull_y)) - 1e-12, name
