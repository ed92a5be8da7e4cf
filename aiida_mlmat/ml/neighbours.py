"""Batched neighbour lists (vesin) and the graph tensors descriptors are built from."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

from aiida_mlmat.common.constants import MIN_INTERATOMIC_DISTANCE

#: The smallest cutoff (Å) a neighbour list is built with: the shortest interatomic distance a configuration may
#: have (closer atoms are refused as unphysical), so a smaller cutoff would find no neighbour in any accepted
#: structure and give all-zero descriptors; vesin also fails on tiny cutoffs (``cutoff is too small``).
MIN_CUTOFF = MIN_INTERATOMIC_DISTANCE

#: A periodic cell may be narrower than the cutoff (periodic images are summed), but not by more than this
#: factor: beyond it the number of images explodes and a supercell is the right tool.
MAX_CUTOFF_TO_WIDTH = 4.0


class CutoffError(ValueError):
    """The cutoff does not suit a structure's cell."""


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    """Return the three perpendicular widths (Å) of a cell (distances between opposite faces)."""
    volume = abs(np.linalg.det(cell))
    return np.array([volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)])


def check_cutoff(atoms: Atoms, cutoff: float, index: int = 0) -> None:
    """Refuse a cutoff that is not positive, smaller than :data:`MIN_CUTOFF` or too large for the periodic directions
    of the cell.

    The minimum, :data:`MIN_CUTOFF` = 0.5 Å, is the shortest interatomic distance a configuration may have: below it
    no accepted structure has a neighbour within the cutoff (every descriptor would be zero), and vesin itself fails
    on such cutoffs with an unclear ``cutoff is too small``.

    :param cutoff: the cutoff radius in Å.
    :param index: the position of ``atoms`` in its set, for the message.
    :raises CutoffError: naming the cutoff (and the structure when the cell is the reason).
    """
    if not cutoff > 0:
        raise CutoffError(f'the cutoff must be positive, got {cutoff} Å')
    if not math.isfinite(cutoff):
        raise CutoffError(f'the cutoff must be a finite number of Å, got {cutoff}')
    if cutoff < MIN_CUTOFF:
        raise CutoffError(
            f'the cutoff {cutoff:g} Å is below the minimum of {MIN_CUTOFF:g} Å (the shortest interatomic distance a '
            'configuration may have: no atom would have a neighbour); give a cutoff of a few Å, e.g. 5'
        )
    pbc = atoms.pbc
    if not pbc.any():
        return
    cell = atoms.cell.array
    if abs(np.linalg.det(cell)) < 1e-9:
        raise CutoffError(f'structure {index} is periodic but its cell is degenerate')
    widths = perpendicular_widths(cell)[pbc]
    if cutoff > MAX_CUTOFF_TO_WIDTH * widths.min():
        raise CutoffError(
            f'structure {index} ({atoms.get_chemical_formula()}): cutoff {cutoff} Å is more than '
            f'{MAX_CUTOFF_TO_WIDTH:g} times the smallest perpendicular cell width ({widths.min():.2f} Å); '
            'build a supercell (Atoms.repeat) or lower the cutoff'
        )


@dataclass
class Graph:
    """Atoms of many structures as one graph (all tensors on one device).

    :ivar positions: (n_atoms, 3) Å; set ``requires_grad`` on it for forces.
    :ivar numbers: (n_atoms,) atomic numbers.
    :ivar structure: (n_atoms,) index of the structure each atom belongs to.
    :ivar centre, neighbour: (n_edges,) atom indices of each directed edge i -> j within the cutoff.
    :ivar shifts: (n_edges, 3) Å, the periodic-image offset so that r_ij = pos[j] - pos[i] + shift.
    :ivar n_structures: number of structures.
    :ivar cells: (n_structures, 3, 3) Å, zero for non-periodic structures.
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    structure: torch.Tensor
    centre: torch.Tensor
    neighbour: torch.Tensor
    shifts: torch.Tensor
    n_structures: int
    cells: torch.Tensor | None = None

    def strained(self, strain: torch.Tensor) -> Graph:
        """The same graph under a homogeneous strain per structure, ``strain`` (n_structures, 3, 3).

        Positions, image shifts and cells are deformed by (1 + strain); differentiating the energy with respect
        to ``strain`` at zero gives the stress times the volume.
        """
        import dataclasses

        deformation = torch.eye(3, dtype=strain.dtype, device=strain.device) + strain
        positions = torch.einsum('ni,nij->nj', self.positions, deformation[self.structure])
        shifts = torch.einsum('ei,eij->ej', self.shifts, deformation[self.structure[self.centre]])
        cells = torch.einsum('sai,sij->saj', self.cells, deformation) if self.cells is not None else None
        return dataclasses.replace(self, positions=positions, shifts=shifts, cells=cells)

    def edge_vectors(self) -> torch.Tensor:
        """r_ij vectors (n_edges, 3) in Å, differentiable with respect to ``positions``."""
        return self.positions[self.neighbour] - self.positions[self.centre] + self.shifts


def build_graph(
    frames: Sequence[Atoms],
    cutoff: float,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = 'cpu',
) -> Graph:
    """Build the neighbour graph of many structures with vesin (any cell shape, periodic or not)."""
    from vesin import NeighborList

    if len(frames) == 0:
        raise ValueError('no structures given')
    calculator = NeighborList(cutoff=cutoff, full_list=True, sorted=True)
    centres, neighbours, shifts = [], [], []
    offset = 0
    for index, atoms in enumerate(frames):
        if len(atoms) == 0:
            raise ValueError(f'structure {index} has no atoms')
        periodic = bool(atoms.pbc.all())
        if atoms.pbc.any() and not periodic:
            raise ValueError(f'structure {index}: mixed periodicity {atoms.pbc.tolist()} is not supported')
        check_cutoff(atoms, cutoff, index)
        box = atoms.cell.array if periodic else np.zeros((3, 3))
        i, j, s = calculator.compute(points=atoms.positions, box=box, periodic=periodic, quantities='ijS')
        centres.append(i.astype(np.int64) + offset)
        neighbours.append(j.astype(np.int64) + offset)
        shifts.append(s.astype(np.float64) @ atoms.cell.array if periodic else np.zeros((len(i), 3)))
        offset += len(atoms)
    positions = np.concatenate([atoms.positions for atoms in frames])
    numbers = np.concatenate([atoms.numbers for atoms in frames])
    structure = np.concatenate([np.full(len(atoms), k) for k, atoms in enumerate(frames)])
    return Graph(
        positions=torch.tensor(positions, dtype=dtype, device=device),
        numbers=torch.tensor(numbers, dtype=torch.long, device=device),
        structure=torch.tensor(structure, dtype=torch.long, device=device),
        centre=torch.tensor(np.concatenate(centres), dtype=torch.long, device=device),
        neighbour=torch.tensor(np.concatenate(neighbours), dtype=torch.long, device=device),
        shifts=torch.tensor(np.concatenate(shifts), dtype=dtype, device=device),
        n_structures=len(frames),
        cells=torch.tensor(
            np.stack([atoms.cell.array if atoms.pbc.all() else np.zeros((3, 3)) for atoms in frames]),
            dtype=dtype,
            device=device,
        ),
    )


_PAIR_TABLES: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _pair_table(n_max: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (a, b), a < b < n_max, ordered by b then a: the pairs of n neighbours are the first n(n-1)/2."""
    key = (n_max, str(device))
    if key not in _PAIR_TABLES or _PAIR_TABLES[key][0].device != device:
        b = torch.repeat_interleave(torch.arange(n_max, device=device), torch.arange(n_max, device=device))
        a = torch.cat([torch.arange(k, device=device) for k in range(n_max)]) if n_max else b
        _PAIR_TABLES[key] = (a, b)
    return _PAIR_TABLES[key]


def triplets(centre: torch.Tensor, n_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return edge index pairs (first, second) of every two distinct edges sharing a centre atom.

    ``centre`` must be sorted (the graph's edges are grouped by centre atom).
    """
    device = centre.device
    counts = torch.bincount(centre, minlength=n_atoms)
    pairs_per_centre = counts * (counts - 1) // 2
    total = int(pairs_per_centre.sum())
    if total == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    n_max = int(counts.max())
    table_a, table_b = _pair_table(n_max, device)
    pair_centre = torch.repeat_interleave(torch.arange(n_atoms, device=device), pairs_per_centre)
    pair_start = torch.cumsum(pairs_per_centre, 0) - pairs_per_centre
    rank = torch.arange(total, device=device) - pair_start[pair_centre]
    base = (torch.cumsum(counts, 0) - counts)[pair_centre]
    return base + table_a[rank], base + table_b[rank]
