"""Hull plots (PNG) and the screening table (CSV). Energies in eV/atom.

``results`` is what :func:`aiida_mlmat.hull.phase.hull_results` or :func:`~aiida_mlmat.hull.phase.ensemble_hull`
return (``{name: {...}}``), possibly with more keys (``converged``, ``reference_e_above_hull`` ...).
``references`` may be the table given to those functions (``{name: (composition, total energy in eV)}``) or a
summary ``{name: {'formula' or 'composition': ..., 'energy_per_atom': ...}}``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Columns of the CSV table, in order.
COLUMNS = (
    'name',
    'formula',
    'status',
    'reason',
    'energy_per_atom',
    'e_form_per_atom',
    'e_above_hull',
    'e_above_hull_std',
    'p_stable',
    'stable',
)
#: Columns added when any candidate has them (relaxation, verification with the reference method).
OPTIONAL_COLUMNS = (
    'converged',
    'reference_e_form_per_atom',
    'reference_e_above_hull',
    'reference_stable',
    'model_e_above_hull',
)


def _cell(value: Any) -> Any:
    if value is None:
        return ''
    if isinstance(value, float) and not math.isfinite(value):
        return ''
    return value


def write_table(results: Mapping[str, Mapping[str, Any]], path: str | Path) -> None:
    """Write one row per candidate to a CSV file: stable and low e_above_hull first, failed candidates last.

    Columns: name, formula, status, reason, energy_per_atom, e_form_per_atom, e_above_hull, e_above_hull_std,
    p_stable, stable, and those of :data:`OPTIONAL_COLUMNS` that any candidate has. Missing values are empty.
    """
    columns = list(COLUMNS)
    columns += [key for key in OPTIONAL_COLUMNS if any(key in entry for entry in results.values())]

    def order(name: str) -> tuple:
        entry = results[name]
        value = entry.get('e_above_hull')
        if entry.get('status', 'ok') != 'ok' or value is None:
            return (True, math.inf, name)
        return (False, float(value), name)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open('w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction='ignore')
        writer.writeheader()
        for name in sorted(results, key=order):
            entry = results[name]
            row = {key: _cell(entry.get(key)) for key in columns}
            row['name'] = entry.get('name') or name
            row['status'] = entry.get('status', 'ok')
            writer.writerow(row)


def _composition(entry: Any) -> dict[str, float] | None:
    """Return ``{element: amount}`` of a results entry, a reference tuple or a reference summary."""
    from pymatgen.core import Composition

    value = None
    if isinstance(entry, tuple | list) and entry:
        value = entry[0]
    elif isinstance(entry, Mapping):
        value = entry.get('composition') or entry.get('formula')
    if not value:
        return None
    try:
        composition = Composition(value)
    except Exception:  # an unparsable formula is just left out of the plot
        return None
    return {str(el): float(amount) for el, amount in composition.items()}


def _reference_points(references: Mapping[str, Any]) -> list[tuple[str, dict[str, float], float]]:
    """Return (name, composition, formation energy per atom) of the references (elements at 0)."""
    rows = []
    for name, entry in (references or {}).items():
        composition = _composition(entry)
        if not composition:
            continue
        n_atoms = sum(composition.values())
        if isinstance(entry, tuple | list) and len(entry) > 1:
            energies = entry[1]
            energy = float(sum(energies) / len(energies)) if isinstance(energies, list | tuple) else float(energies)
            per_atom = energy / n_atoms
        elif isinstance(entry, Mapping) and entry.get('energy_per_atom') is not None:
            per_atom = float(entry['energy_per_atom'])
        elif isinstance(entry, Mapping) and entry.get('e_form_per_atom') is not None:
            rows.append((name, composition, float(entry['e_form_per_atom'])))
            continue
        else:
            continue
        rows.append((name, composition, per_atom))
    # turn energies per atom into formation energies with the lowest elemental energy of each element
    mu: dict[str, float] = {}
    for _, composition, value in rows:
        if len(composition) == 1:
            (element,) = composition
            mu[element] = min(mu.get(element, math.inf), value)
    points = []
    for name, composition, value in rows:
        if not all(el in mu for el in composition):
            continue
        n_atoms = sum(composition.values())
        reference = sum(amount * mu[el] for el, amount in composition.items()) / n_atoms
        points.append((name, composition, value - reference))
    return points


def _fraction(composition: Mapping[str, float], element: str) -> float:
    total = sum(composition.values())
    return composition.get(element, 0.0) / total if total else 0.0


def lower_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the lower convex hull of 2D points (monotone chain), left to right."""
    hull: list[tuple[float, float]] = []
    for point in sorted(set(points)):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (point[1] - y1) - (y2 - y1) * (point[0] - x1) <= 0:
                hull.pop()
            else:
                break
        hull.append(point)
    return hull


def _ok(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {
        name: entry
        for name, entry in results.items()
        if entry.get('status', 'ok') == 'ok' and entry.get('e_form_per_atom') is not None
    }


def plot_hull(
    results: Mapping[str, Mapping[str, Any]],
    references: Mapping[str, Any] | None,
    path: str | Path,
    elements: Sequence[str],
) -> None:
    """Save a hull plot as PNG (matplotlib, Agg backend).

    - Two elements: formation energy per atom against the atomic fraction of the second element; candidates with
      error bars of ``e_form_per_atom_std`` (stable ones in colour and labelled), reference compounds as squares,
      and the hull of the plotted (ensemble-mean) formation energies, references and elements included, so no
      point lies below it; a point's colour is its verdict over the members' own hulls.
    - Three elements: pymatgen's ``PDPlotter(..., backend='matplotlib')`` of the references and candidates
      (mean formation energies).
    - Otherwise: energy above the hull of every candidate as bars.

    Failed candidates are left out.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    elements = list(elements)
    ok = _ok(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(elements) == 3:
        _ternary(ok, references or {}, elements, path)
        return
    kinds = [stability_class(entry) for entry in ok.values()]
    n_stable, n_uncertain = kinds.count('stable'), kinds.count('uncertain')
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    if len(elements) == 2:
        _binary(ax, ok, references or {}, elements)
    else:
        names = sorted(ok, key=lambda name: (float(ok[name].get('e_above_hull') or 0.0), name))
        values = [float(ok[name].get('e_above_hull') or 0.0) for name in names]
        errors = [float(ok[name].get('e_above_hull_std') or 0.0) for name in names]
        ax.bar(range(len(names)), values, yerr=errors, color='tab:grey')
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_ylabel('energy above hull (eV/atom)')
    uncertain = f', {n_uncertain} uncertain' if n_uncertain else ''
    ax.set_title(f'{"-".join(elements)}: {n_stable} stable{uncertain} of {len(ok)} candidates')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stability_class(entry: Mapping[str, Any]) -> str:
    """``stable`` (most members put it on the hull), ``uncertain`` (some, not most) or ``above hull`` (none)."""
    if entry.get('stable'):
        return 'stable'
    p_stable = entry.get('p_stable')
    return 'uncertain' if p_stable is not None and float(p_stable) > 0.0 else 'above hull'


def _binary(ax: Any, ok: Mapping[str, Mapping[str, Any]], references: Mapping[str, Any], elements: list[str]) -> None:
    first, second = elements
    xs, ys, errors, kinds, labels = [], [], [], [], []
    for name, entry in ok.items():
        composition = _composition(entry)
        if composition is None:
            continue
        xs.append(_fraction(composition, second))
        ys.append(float(entry['e_form_per_atom']))
        errors.append(float(entry.get('e_form_per_atom_std') or 0.0))
        kinds.append(stability_class(entry))
        labels.append(entry.get('formula') or name)
    styles = {  # drawn in this order; labels of the stable and uncertain points are written beside them
        'above hull': {'ms': 4, 'color': 'tab:grey', 'alpha': 0.7},
        'uncertain': {'ms': 5, 'color': 'tab:orange', 'label': 'uncertain (some members: on the hull)'},
        'stable': {'ms': 6, 'color': 'tab:red'},
    }
    for kind, style in styles.items():
        chosen = [i for i, k in enumerate(kinds) if k == kind]
        if not chosen:
            continue
        ax.errorbar(
            [xs[i] for i in chosen],
            [ys[i] for i in chosen],
            yerr=[errors[i] for i in chosen],
            fmt='o',
            **{'label': kind, **style},
        )
        if kind != 'above hull':
            for i in chosen:
                ax.annotate(labels[i], (xs[i], ys[i]), textcoords='offset points', xytext=(4, -10), fontsize=7)
    compounds = [(name, comp, e) for name, comp, e in _reference_points(references) if len(comp) > 1]
    if compounds:
        ax.plot(
            [_fraction(comp, second) for _, comp, _ in compounds],
            [e for _, _, e in compounds],
            's',
            color='black',
            mfc='none',
            label='references',
        )
    # The line is the hull of the points drawn (the ensemble-mean energies), so no point lies below it; a point's
    # colour is its verdict over the members' own hulls (P(stable)), which the mean hull need not share.
    hull = lower_hull(
        [(0.0, 0.0), (1.0, 0.0)]
        + [(xs[i], ys[i]) for i in range(len(xs))]
        + [(_fraction(comp, second), e) for _, comp, e in compounds]
    )
    ax.plot([p[0] for p in hull], [p[1] for p in hull], '-', color='tab:red', lw=1.2, label='hull of the mean energies')
    ax.axhline(0.0, color='black', lw=0.5)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(f'atomic fraction of {second} in {first}$_{{1-x}}${second}$_x$')
    ax.set_ylabel('formation energy (eV/atom)')
    ax.legend(
        fontsize=8, title="points: ensemble mean ± spread\ncolour: verdict over the members' hulls", title_fontsize=7
    )


def _ternary(
    ok: Mapping[str, Mapping[str, Any]], references: Mapping[str, Any], elements: list[str], path: Path
) -> None:
    import matplotlib.pyplot as plt
    from pymatgen.analysis.phase_diagram import PDEntry, PDPlotter, PhaseDiagram
    from pymatgen.core import Composition

    entries = [PDEntry(Composition({el: 1}), 0.0, name=el) for el in elements]
    for name, reference, e_form in _reference_points(references):
        if len(reference) > 1 and set(reference) <= set(elements):
            comp = Composition(reference)
            entries.append(PDEntry(comp, e_form * comp.num_atoms, name=name))
    for name, entry in ok.items():
        composition = _composition(entry)
        if composition is None or not set(composition) <= set(elements):
            continue
        comp = Composition(composition)
        entries.append(PDEntry(comp, float(entry['e_form_per_atom']) * comp.num_atoms, name=name))
    plotter = PDPlotter(PhaseDiagram(entries), backend='matplotlib', show_unstable=0.2)
    plot: Any = plotter.get_plot()  # matplotlib Axes (older pymatgen: the pyplot module)
    figure: Any = plot.get_figure() if hasattr(plot, 'get_figure') else plt.gcf()
    figure.savefig(path, dpi=120)
    plt.close('all')
