"""Diversity selection in descriptor space: farthest-point sampling and CUR (numpy; imports no aiida)."""

from __future__ import annotations

import numpy as np

METHODS = ('fps', 'cur')


def _check(points: np.ndarray, n: int) -> np.ndarray:
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or len(points) == 0:
        raise ValueError('selection needs a non-empty (n_points, n_features) array')
    if n < 1:
        raise ValueError(f'the number to select must be at least 1, got {n}')
    return points


def farthest_point_sampling(
    points: np.ndarray, n: int, start: int | None = None, reference: np.ndarray | None = None
) -> list[int]:
    """Greedy farthest-point sampling: each pick maximises its distance to those already picked.

    Deterministic: the first pick is ``start`` or, by default, the point farthest from the centroid (with
    ``reference``: the point farthest from the reference points). ``reference`` (rows in the same space as
    ``points``, e.g. what is already labelled) counts as picked from the outset, so later picks keep away from it
    too; a point that duplicates a reference row is never picked (unless it is ``start``). Returns at most
    ``len(points)`` indices, in the order picked.

    :raises ValueError: for an empty or non-2D ``points``, ``n`` below 1, or ``reference`` of another width.
    """
    points = _check(points, n)
    n = min(n, len(points))
    distance = np.full(len(points), np.inf)
    if reference is not None:
        reference = np.asarray(reference, dtype=float)
        if reference.ndim != 2 or reference.shape[1] != points.shape[1]:
            raise ValueError(f'reference points of shape {reference.shape} for points of {points.shape[1]} features')
        reference = reference if len(reference) else None
    if reference is not None:
        for row in reference:
            distance = np.minimum(distance, np.linalg.norm(points - row, axis=1))
    if start is not None:
        first = start
    elif reference is not None:
        first = int(np.argmax(distance))
        if distance[first] <= 0:
            return []  # every point duplicates a reference row
    else:
        first = int(np.argmax(np.linalg.norm(points - points.mean(axis=0), axis=1)))
    picked = [first]
    distance = np.minimum(distance, np.linalg.norm(points - points[first], axis=1))
    for _ in range(n - 1):
        candidate = int(np.argmax(distance))
        if distance[candidate] <= 0:
            break  # only duplicates are left
        picked.append(candidate)
        distance = np.minimum(distance, np.linalg.norm(points - points[candidate], axis=1))
    return picked


# A direction counts while its singular value exceeds this fraction of the largest singular value of the centred data
# (singular values, not eigenvalues of a Gram matrix: no squaring). Relative to the data, not to the current
# residual, so that a residual left with round-off only (~1e-15 of the data) ends the selection.
_CUR_TOLERANCE = 1e-11


def cur_selection(points: np.ndarray, n: int, rank: int | None = None) -> list[int]:
    """Deterministic CUR row selection: repeatedly take the row of highest leverage and project it out.

    Leverage is computed from the top ``rank`` (default ``n``) right-singular directions of the centred data.
    A direction counts while its singular value exceeds ``1e-11`` of the largest singular value of the centred
    data; selection stops when no direction is left (or no unpicked row has leverage), so at most the rank of the
    centred data is picked (one index where the centred rows are all zero). No row is picked twice.

    Cost: one thin QR factorisation ``X = Q T`` of the centred data (``n_points x m`` with ``m = min(n_points,
    n_features)``; ``X = L Qᵀ`` where there are more features than points, which works on ``L`` alone). The
    residual is then ``Q M`` with the small ``m x m`` matrix ``M`` (at first ``T``), so a pick costs an SVD of
    ``M`` (``O(m³)``), the leverages ``|Q U_k|²`` by row (``O(n_points · m · k)``) and the projection
    ``M ← M (I - u uᵀ)`` (``O(m²)``), instead of a full SVD of the ``n_points x n_features`` residual. No Gram
    matrix is formed, whose eigenvalues would square the singular values and their round-off.
    """
    points = _check(points, n)
    n = min(n, len(points))
    keep = rank or n
    centred = points - points.mean(axis=0)
    if centred.shape[1] > centred.shape[0]:  # X = L Qᵀ: the rows live in an n_points-dimensional subspace
        basis, small = None, np.linalg.qr(centred.T)[1].T
    else:
        basis, small = np.linalg.qr(centred)
    floor = None
    picked: list[int] = []
    for _ in range(n):
        left, values, _ = np.linalg.svd(small)
        if floor is None:
            if values[0] <= 0:
                return [0]  # all rows equal: nothing tells them apart
            floor = _CUR_TOLERANCE * values[0]
        k = min(keep, int((values > floor).sum()))
        if k == 0:
            break
        directions = left[:, :k] if basis is None else basis @ left[:, :k]
        leverage = (directions**2).sum(axis=1)
        leverage[picked] = -1.0
        choice = int(np.argmax(leverage))
        if leverage[choice] <= 1e-14:
            break
        picked.append(choice)
        row = small[choice] if basis is None else basis[choice] @ small  # the residual row, in the m coordinates
        norm = row @ row
        if norm > 0:
            small = small - np.outer(small @ row / norm, row)
    return picked


def select(points: np.ndarray, n: int, method: str = 'fps') -> list[int]:
    """Select ``n`` diverse rows of ``points`` with ``fps`` or ``cur``.

    CUR picks at most as many rows as the centred data has dimensions (its rank); where ``n`` is more, the rest are
    picked by farthest-point sampling away from the rows CUR picked. Either way ``n`` rows come back where there are
    ``n`` distinct ones (FPS stops early only when every row left duplicates one picked).
    """
    if method == 'fps':
        return farthest_point_sampling(points, n)
    if method == 'cur':
        points = _check(points, n)
        picked = cur_selection(points, n)
        if len(picked) < min(n, len(points)):
            taken = set(picked)
            rest = [position for position in range(len(points)) if position not in taken]
            extra = farthest_point_sampling(points[rest], n - len(picked), reference=points[picked])
            picked += [rest[position] for position in extra]
        return picked
    raise ValueError(f'unknown selection method `{method}`; known: {", ".join(METHODS)}')


def out_of_distribution_scores(
    reference: list[np.ndarray], queries: list[np.ndarray], chunk: int = 4096
) -> tuple[np.ndarray, float]:
    """Distance of each query configuration to the nearest reference environment.

    Each configuration scores the largest, over its atoms, of the distance from the atom's descriptor to the
    nearest reference atomic environment, divided by the median nearest-neighbour distance within the
    reference (leave-one-out). A score near or below 1 means seen-before environments; well above 1, novel ones.

    :return: (scores per query configuration, the normalising scale).
    """
    ref = np.concatenate(reference).astype(np.float64)
    if len(ref) < 2:
        raise ValueError('the reference needs at least two atomic environments')

    def nearest(block: np.ndarray, exclude_self: bool = False, offset: int = 0) -> np.ndarray:
        out = np.empty(len(block))
        ref_sq = (ref**2).sum(axis=1)
        for start in range(0, len(block), chunk):
            part = block[start : start + chunk]
            d2 = (part**2).sum(axis=1)[:, None] + ref_sq[None, :] - 2 * part @ ref.T
            if exclude_self:
                rows = np.arange(len(part))
                d2[rows, offset + start + rows] = np.inf
            out[start : start + len(part)] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
        return out

    scale = float(np.median(nearest(ref, exclude_self=True)))
    scale = scale if scale > 0 else 1.0
    scores = np.array([nearest(np.asarray(q, dtype=np.float64)).max() / scale for q in queries])
    return scores, scale


def pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows onto their first two principal components; return (coordinates, explained variance ratios)."""
    points = np.asarray(points, dtype=float)
    centred = points - points.mean(axis=0)
    scale = centred.std(axis=0)
    centred = centred / np.where(scale > 0, scale, 1.0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    variance = s**2 / max((s**2).sum(), 1e-300)
    return coords, np.pad(variance[:2], (0, max(0, 2 - len(variance[:2]))))


def check_colour(key: str, species: list[str] | set[str], energies: bool = True) -> None:
    """Refuse a map colour that is neither ``energy`` nor ``composition:EL`` for an element EL of ``species``.

    :param energies: whether any configuration has an energy (``energy`` on a set without one is refused: its map
        would have no point to draw).
    :raises ValueError: naming the key (and the elements there are, for an element that is in no configuration:
        its map would be one flat colour).
    """
    if key == 'energy':
        if not energies:
            raise ValueError(
                '`energy`: no configuration has an energy (the set is unlabelled); colour by `composition:<element>`'
            )
        return
    if not key.startswith('composition:'):
        raise ValueError(f'colour must be `energy` or `composition:<element>`, got `{key}`')
    symbol = key.split(':', 1)[1]
    if symbol not in species:
        raise ValueError(
            f'`{key}`: {symbol!r} is in none of the configurations (elements: {", ".join(sorted(species))})'
        )


def map_colours(frames: list, key: str) -> tuple[np.ndarray, str]:
    """Per-configuration colour values of a data-set map and their axis label.

    ``energy``: energy per atom (eV/atom, NaN where unlabelled: drawn grey); ``composition:EL``: the fraction of
    element EL.
    :raises ValueError: for any other key, or an element in none of the frames (see :func:`check_colour`).
    """
    values = [(f.calc.results.get('energy', np.nan) if f.calc is not None else np.nan) / len(f) for f in frames]
    energies = bool(np.isfinite(values).any())
    check_colour(key, {symbol for frame in frames for symbol in frame.get_chemical_symbols()}, energies)
    if key == 'energy':
        return np.array(values), 'energy (eV/atom)'
    if key.startswith('composition:'):
        symbol = key.split(':', 1)[1]
        return np.array([f.get_chemical_symbols().count(symbol) / len(f) for f in frames]), f'x({symbol})'
    raise AssertionError(key)  # check_colour refused every other key


def plot_map(coords: np.ndarray, colour: np.ndarray, colour_label: str, path: str, title: str = 'data-set map') -> str:
    """Scatter the 2-D map coloured by a per-configuration value and save it as PNG."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    colour = np.asarray(colour, dtype=float)
    missing = ~np.isfinite(colour)
    if missing.any():  # unlabelled configurations: grey, so that none vanishes from the map
        axes.scatter(coords[missing, 0], coords[missing, 1], c='lightgrey', s=14, edgecolors='none', label='no value')
        axes.legend(loc='best', fontsize='small')
    sc = axes.scatter(
        coords[~missing, 0], coords[~missing, 1], c=colour[~missing], cmap='viridis', s=14, edgecolors='none'
    )
    figure.colorbar(sc, ax=axes, label=colour_label)
    axes.set_xlabel('PC 1')
    axes.set_ylabel('PC 2')
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
