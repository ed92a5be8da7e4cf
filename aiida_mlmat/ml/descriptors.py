"""Atomic-environment descriptors in torch: Chebyshev (Artrith, Urban, Ceder 2017) and ACSF (Behler-Parrinello).

Both are batched over many structures (one graph), work for periodic cells of any shape and for molecules,
in float32 or float64, on CPU or CUDA, and are differentiable with respect to positions through autograd, so
the same code can feed a force-trained model.

Chebyshev descriptors (aenet's form): for each atom i, with x = 2 r / R_c - 1,

    radial  c_a = sum_j        T_a(x_ij) f_c(r_ij)                          a = 0 .. n_radial - 1
    angular c_a = sum_{j!=k}   T_a(cos theta_ijk) f_c(r_ij) f_c(r_ik)       a = 0 .. n_angular - 1

once unweighted (structure) and once with species weights w_j (w_j w_k for angular terms), so the size does
not grow with the number of species: 2 (n_radial + n_angular) features for two or more species.

ACSF: G1, G2 (eta, R_s) per neighbour species and G4 (eta, zeta, lambda) per species pair, in DScribe's order
and conventions (G4 includes f_c(r_jk) and the 2^(1-zeta) prefactor, sum over pairs j < k).

f_c(r) = (cos(pi r / R_c) + 1) / 2 for r < R_c, else 0: continuous with its first derivative at R_c.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from aiida_mlmat.ml.neighbours import Graph, build_graph, triplets

KINDS = ('chebyshev', 'acsf')

warnings.filterwarnings('ignore', message='Sparse CSR tensor support is in beta state')


def cutoff_function(r: torch.Tensor, rcut: float) -> torch.Tensor:
    """Cosine cutoff, zero beyond ``rcut``."""
    return torch.where(r < rcut, 0.5 * (torch.cos(math.pi * r / rcut) + 1.0), torch.zeros_like(r))


def chebyshev(x: torch.Tensor, order: int) -> torch.Tensor:
    """Chebyshev polynomials T_0..T_{order-1} of x (any shape) -> (..., order), by the recurrence."""
    values = [torch.ones_like(x), x]
    for _ in range(2, order):
        values.append(2 * x * values[-1] - values[-2])
    return torch.stack(values[:order], dim=-1)


def species_weights(species: Sequence[str]) -> dict[int, float]:
    """aenet-style species weights: balanced integers around zero, skipping 0 for an even count.

    Two species get -1, +1; three get -1, 0, +1; four get -2, -1, +1, +2.
    """
    n = len(species)
    values = [v for v in range(-(n // 2), n // 2 + 1) if n % 2 or v != 0]
    return {atomic_numbers[symbol]: float(value) for symbol, value in zip(sorted_species(species), values, strict=True)}


def sorted_species(species: Sequence[str]) -> list[str]:
    """Species sorted by atomic number (DScribe's order)."""
    return sorted(dict.fromkeys(species), key=lambda symbol: atomic_numbers[symbol])


_MOMENT_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _moment_tables(
    n_angular: int, device: torch.device | str = 'cpu', dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Monomial exponents (K, 3), multinomial multiplicities (K,), degrees (K,) and the monomial coefficients
    of T_0..T_{n_angular-1} as an (n_angular, n_angular) matrix (row a: coefficients of x^0..x^(n-1))."""
    key = (n_angular, str(device), dtype)
    if key not in _MOMENT_TABLES:
        from numpy.polynomial import chebyshev as cheb

        exponents, multiplicity, degree = [], [], []
        for n in range(n_angular):
            for a in range(n, -1, -1):
                for b in range(n - a, -1, -1):
                    c = n - a - b
                    exponents.append((a, b, c))
                    multiplicity.append(math.factorial(n) / (math.factorial(a) * math.factorial(b) * math.factorial(c)))
                    degree.append(n)
        coefficients = np.zeros((n_angular, n_angular))
        for order in range(n_angular):
            poly = cheb.cheb2poly([0] * order + [1])
            coefficients[order, : len(poly)] = poly
        _MOMENT_TABLES[key] = (
            torch.tensor(exponents, dtype=torch.long, device=device),
            torch.tensor(multiplicity, dtype=dtype, device=device),
            torch.tensor(degree, dtype=torch.long, device=device),
            torch.tensor(coefficients, dtype=dtype, device=device),
        )
    return _MOMENT_TABLES[key]


class _SegmentSum(torch.autograd.Function):
    """out[i] = sum over edges e of centre i of values[e] * dense[e]: CSR product forward, edge-wise backward.

    torch's own backward of a CSR product materialises an atoms x edges matrix (quadratic in size); this backward
    is linear: grad_dense[e] = values[e] grad_out[centre[e]], grad_values[e] = grad_out[centre[e]] . dense[e].
    It is written with differentiable operations, so second derivatives (training on forces) work too.
    """

    @staticmethod
    def forward(ctx: Any, centre: torch.Tensor, crow: torch.Tensor, values: torch.Tensor, dense: torch.Tensor):
        n_atoms = crow.shape[0] - 1
        columns = torch.arange(centre.shape[0], device=centre.device)
        matrix = torch.sparse_csr_tensor(crow, columns, values, size=(n_atoms, centre.shape[0]), check_invariants=False)
        ctx.save_for_backward(centre, values, dense)
        return matrix @ dense

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        centre, values, dense = ctx.saved_tensors
        gathered = grad_out[centre]
        grad_values = (gathered * dense).sum(dim=1) if ctx.needs_input_grad[2] else None
        grad_dense = gathered * values[:, None] if ctx.needs_input_grad[3] else None
        return None, None, grad_values, grad_dense


def segment_sum(
    centre: torch.Tensor, values: torch.Tensor, dense: torch.Tensor, n_atoms: int, sparse: bool = True
) -> torch.Tensor:
    """sum over edges e of centre i of values[e] * dense[e, :] (edges sorted by centre, as the graph's are).

    The sparse path is a CSR (atoms x edges) product with a linear, differentiable backward (:class:`_SegmentSum`),
    several times faster on CPU than a scatter of the product; ``sparse=False`` is the plain scatter (same numbers).
    """
    if not sparse:
        out = torch.zeros(n_atoms, dense.shape[1], dtype=dense.dtype, device=dense.device)
        return out.index_add(0, centre, dense * values[:, None])
    counts = torch.bincount(centre, minlength=n_atoms)
    crow = torch.zeros(n_atoms + 1, dtype=torch.long, device=centre.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return _SegmentSum.apply(centre, crow, values, dense)


def symmetric_monomials(unit: torch.Tensor, n_degrees: int) -> torch.Tensor:
    """Monomials u_x^a u_y^b u_z^c of degrees 0 .. n_degrees - 1, in :func:`_moment_tables` order: (E, K).

    Built degree by degree: the degree-n block is the degree-(n-1) block times u_x, its last n entries (no
    u_x) times u_y, and its last entry (u_z only) times u_z; one multiplication per monomial (out of place,
    so autograd can differentiate it).
    """
    ux, uy, uz = unit[:, 0:1], unit[:, 1:2], unit[:, 2:3]
    blocks = [torch.ones_like(ux)]
    for n in range(1, n_degrees):
        previous = blocks[-1]
        blocks.append(torch.cat([previous * ux, previous[:, -n:] * uy, previous[:, -1:] * uz], dim=1))
    return torch.cat(blocks[:n_degrees], dim=1) if n_degrees else unit[:, :0]


class UnknownSpeciesError(ValueError):
    """A structure holds species the descriptor definition was not made for."""


@dataclass(frozen=True)
class DescriptorSpec:
    """A descriptor definition: everything needed to recompute identical features (stored as attributes).

    :ivar kind: ``chebyshev`` or ``acsf``.
    :ivar species: chemical symbols the descriptor is defined for.
    :ivar rcut: radial cutoff in Å (also the ACSF cutoff).
    :ivar rcut_angular: angular cutoff in Å (Chebyshev only; default: ``rcut``).
    :ivar n_radial, n_angular: Chebyshev orders (number of polynomials).
    :ivar g2: ACSF G2 parameters ``[(eta Å^-2, R_s Å), ...]``.
    :ivar g4: ACSF G4 parameters ``[(eta Å^-2, zeta, lambda), ...]``.
    """

    kind: str
    species: tuple[str, ...]
    rcut: float = 5.0
    rcut_angular: float | None = None
    n_radial: int = 10
    n_angular: int = 6
    g2: tuple[tuple[float, float], ...] = field(default=((0.01, 0.0), (0.1, 0.0), (0.5, 2.5), (1.0, 3.0)))
    g4: tuple[tuple[float, float, float], ...] = field(
        default=((0.005, 1.0, 1.0), (0.005, 1.0, -1.0), (0.01, 4.0, 1.0))
    )

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f'unknown descriptor kind `{self.kind}`; known: {", ".join(KINDS)}')
        if not self.species:
            raise ValueError('a descriptor needs at least one species')
        for symbol in self.species:
            if symbol not in atomic_numbers or atomic_numbers[symbol] == 0:
                raise ValueError(f'unknown element `{symbol}`')
        object.__setattr__(self, 'species', tuple(sorted_species(self.species)))
        object.__setattr__(self, 'g2', tuple(tuple(float(v) for v in p) for p in self.g2))
        object.__setattr__(self, 'g4', tuple(tuple(float(v) for v in p) for p in self.g4))
        if not self.rcut > 0:
            raise ValueError(f'the cutoff must be positive, got {self.rcut} Å')
        if self.rcut_angular is not None and not 0 < self.rcut_angular <= self.rcut:
            raise ValueError('rcut_angular must be positive and at most rcut')
        if self.n_radial < 1 or self.n_angular < 0:
            raise ValueError('n_radial must be at least 1 and n_angular at least 0')

    @property
    def angular_cutoff(self) -> float:
        """The cutoff of angular terms (Å)."""
        return self.rcut if self.rcut_angular is None else self.rcut_angular

    @property
    def n_features(self) -> int:
        """Number of features per atom."""
        n_species = len(self.species)
        if self.kind == 'chebyshev':
            blocks = 1 if n_species == 1 else 2
            return blocks * (self.n_radial + self.n_angular)
        n_pairs = n_species * (n_species + 1) // 2
        return n_species * (1 + len(self.g2)) + n_pairs * len(self.g4)

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable definition."""
        data = asdict(self)
        data['species'] = list(self.species)
        data['g2'] = [list(p) for p in self.g2]
        data['g4'] = [list(p) for p in self.g4]
        data['n_features'] = self.n_features
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DescriptorSpec:
        """Inverse of :meth:`as_dict`."""
        data = {k: v for k, v in data.items() if k != 'n_features'}
        data['species'] = tuple(data['species'])
        for key in ('g2', 'g4'):
            if key in data:
                data[key] = tuple(tuple(p) for p in data[key])
        return cls(**data)

    def check_species(self, frames: Sequence[Atoms]) -> None:
        """Refuse structures holding species outside the definition."""
        known = set(self.species)
        for index, atoms in enumerate(frames):
            extra = set(atoms.get_chemical_symbols()) - known
            if extra:
                raise UnknownSpeciesError(
                    f'structure {index} ({atoms.get_chemical_formula()}) holds {sorted(extra)}, which this '
                    f'descriptor was not defined for (species {list(self.species)})'
                )


class Descriptor(torch.nn.Module):
    """Per-atom descriptors of a :class:`Graph`; ``forward`` returns (n_atoms, n_features)."""

    def __init__(self, spec: DescriptorSpec):
        super().__init__()
        self.spec = spec
        #: CSR segment sums with a linear backward (fast); False selects the plain scatter (same numbers).
        self.sparse = True
        table = torch.zeros(119, dtype=torch.float64)
        index = torch.full((119,), -1, dtype=torch.long)
        for number, weight in species_weights(spec.species).items():
            table[number] = weight
        for position, symbol in enumerate(spec.species):
            index[atomic_numbers[symbol]] = position
        self.register_buffer('weight_table', table, persistent=False)
        self.register_buffer('species_index', index, persistent=False)

    def forward(self, graph: Graph, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the descriptors of every atom of the graph.

        :param vectors: the edge vectors r_ij (n_edges, 3) in Å to use instead of ``graph.edge_vectors()``. The
            descriptors of atom i depend on the positions only through the vectors of the edges centred on i, so
            with these as a leaf tensor one backward pass per feature gives every derivative
            (:func:`aiida_mlmat.ml.model.edge_jacobian`).
        :raises UnknownSpeciesError: when the graph holds an element outside the definition.
        """
        if (self.species_index[graph.numbers] < 0).any():
            unknown = sorted({chemical_symbols[int(z)] for z in graph.numbers[self.species_index[graph.numbers] < 0]})
            raise UnknownSpeciesError(
                f'the structures hold {unknown}, which this descriptor was not defined for '
                f'(species {list(self.spec.species)})'
            )
        if vectors is None:
            vectors = graph.edge_vectors()
        if self.spec.kind == 'chebyshev':
            return self._chebyshev(graph, vectors)
        return self._acsf(graph, vectors)

    # -- Chebyshev ---------------------------------------------------------------------------------------------
    def _chebyshev(self, graph: Graph, vectors: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        n_atoms = graph.positions.shape[0]
        dtype = vectors.dtype
        r = torch.linalg.vector_norm(vectors, dim=1)
        weighted = len(spec.species) > 1
        fc = cutoff_function(r, spec.rcut)
        basis = chebyshev(2.0 * r / spec.rcut - 1.0, spec.n_radial)
        weights = self.weight_table.to(dtype)[graph.numbers[graph.neighbour]] if weighted else None
        radial = segment_sum(graph.centre, fc, basis, n_atoms, self.sparse)
        radial_w = segment_sum(graph.centre, fc * weights, basis, n_atoms, self.sparse) if weighted else None
        blocks = [radial]
        if spec.n_angular:
            angular = self._chebyshev_angular(graph, vectors, r, weights)
            blocks.append(angular[0])
        if weighted:
            blocks.append(radial_w)
            if spec.n_angular:
                blocks.append(angular[1])
        return torch.cat(blocks, dim=1)

    def _chebyshev_angular(
        self, graph: Graph, vectors: torch.Tensor, r: torch.Tensor, weights: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """Angular terms without enumerating triplets, through symmetric moment tensors.

        With g_j = f_c(r_ij) and unit vectors u_j: sum_{j,k} (u_j . u_k)^n g_j g_k = |M_n|^2, where
        M_n = sum_j g_j u_j^(x n) is a symmetric tensor whose distinct components are the monomials
        u_x^a u_y^b u_z^c (a + b + c = n) with multinomial multiplicities. T_a is a polynomial in cos theta,
        and the j = k terms (cos = 1, T_a(1) = 1) are subtracted to leave the sum over distinct pairs.
        """
        spec = self.spec
        n_atoms = graph.positions.shape[0]
        dtype, device = r.dtype, r.device
        _, multiplicity, degree, coefficients = _moment_tables(spec.n_angular, device, dtype)
        centre = graph.centre
        if spec.angular_cutoff < spec.rcut:
            keep = torch.nonzero(r < spec.angular_cutoff).squeeze(1)
            vectors, r, centre = vectors[keep], r[keep], centre[keep]
            weights = weights[keep] if weights is not None else None
        g = cutoff_function(r, spec.angular_cutoff)
        monomials = symmetric_monomials(vectors / r[:, None], spec.n_angular)
        sources = [g] if weights is None else [g, g * weights]
        out = []
        for source in sources:
            moments = segment_sum(centre, source, monomials, n_atoms, self.sparse)
            by_degree = torch.zeros(n_atoms, spec.n_angular, dtype=dtype, device=device)
            by_degree.index_add_(1, degree, moments**2 * multiplicity)
            diagonal = segment_sum(centre, source, source[:, None], n_atoms, self.sparse)[:, 0]
            out.append(by_degree @ coefficients.T - diagonal[:, None])
        return out

    # -- ACSF --------------------------------------------------------------------------------------------------
    def _acsf(self, graph: Graph, vectors: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        n_atoms = graph.positions.shape[0]
        n_species = len(spec.species)
        dtype = vectors.dtype
        device = vectors.device
        r = torch.linalg.vector_norm(vectors, dim=1)
        fc = cutoff_function(r, spec.rcut)
        radial_params = torch.tensor([[0.0, 0.0]] + [list(p) for p in spec.g2], dtype=dtype, device=device)
        eta, rs = radial_params[:, 0], radial_params[:, 1]
        g2 = torch.exp(-eta[None, :] * (r[:, None] - rs[None, :]) ** 2) * fc[:, None]  # column 0 is G1
        n_radial = g2.shape[1]
        neighbour_species = self.species_index[graph.numbers[graph.neighbour]]
        radial = torch.zeros(n_atoms, n_species, n_radial, dtype=dtype, device=device)
        radial.index_put_((graph.centre, neighbour_species), g2, accumulate=True)
        features = [radial.reshape(n_atoms, -1)]
        if spec.g4:
            features.append(self._acsf_angular(graph, vectors, r, fc, neighbour_species))
        return torch.cat(features, dim=1)

    def _acsf_angular(
        self, graph: Graph, vectors: torch.Tensor, r: torch.Tensor, fc: torch.Tensor, neighbour_species: torch.Tensor
    ) -> torch.Tensor:
        spec = self.spec
        n_atoms = graph.positions.shape[0]
        n_species = len(spec.species)
        dtype, device = r.dtype, r.device
        first, second = triplets(graph.centre, n_atoms)
        dot = (vectors[first] * vectors[second]).sum(dim=1)
        r2 = r * r
        r_jk2 = r2[first] + r2[second] - 2.0 * dot
        # f_c(r_jk) vanishes beyond the cutoff: drop those triplets before the expensive terms.
        inside = torch.nonzero(r_jk2 < spec.rcut**2).squeeze(1)
        first, second, dot, r_jk2 = first[inside], second[inside], dot[inside], r_jk2[inside]
        r_ij, r_ik = r[first], r[second]
        r_jk = torch.sqrt(r_jk2.clamp(min=0.0))
        cos = dot / (r_ij * r_ik)
        params = torch.tensor([list(p) for p in spec.g4], dtype=dtype, device=device)
        eta, zeta, lam = params[:, 0], params[:, 1], params[:, 2]
        radial = torch.exp(-eta[None, :] * (r2[first] + r2[second] + r_jk2)[:, None])
        cut = (fc[first] * fc[second] * cutoff_function(r_jk, spec.rcut))[:, None]
        angular = (2.0 ** (1.0 - zeta))[None, :] * (1.0 + lam[None, :] * cos[:, None]).clamp(min=0.0) ** zeta[None, :]
        terms = angular * radial * cut
        # Species pair index in DScribe's order: by the higher index, then the lower: (0,0), (0,1), (1,1), (0,2) ...
        sj, sk = neighbour_species[first], neighbour_species[second]
        low, high = torch.minimum(sj, sk), torch.maximum(sj, sk)
        pair = high * (high + 1) // 2 + low
        n_pairs = n_species * (n_species + 1) // 2
        out = torch.zeros(n_atoms, n_pairs, len(spec.g4), dtype=dtype, device=device)
        out.index_put_((graph.centre[first], pair), terms, accumulate=True)
        return out.reshape(n_atoms, -1)


def compute(
    frames: Sequence[Atoms],
    spec: DescriptorSpec,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = 'cpu',
    batch_atoms: int = 20000,
) -> list[np.ndarray]:
    """Per-atom descriptors of many structures, one (n_atoms, n_features) array each, in batches of atoms.

    :raises UnknownSpeciesError: for species outside ``spec.species``.
    :raises CutoffError: for a cutoff that does not suit a cell.
    :raises ValueError: for an empty list or a structure without atoms.
    """
    if len(frames) == 0:
        raise ValueError('no structures given')
    spec.check_species(frames)
    module = Descriptor(spec).to(device)
    results: list[np.ndarray] = []
    with torch.no_grad():
        for batch in _batches(frames, batch_atoms):
            graph = build_graph(batch, spec.rcut, dtype=dtype, device=device)
            values = module(graph).cpu().numpy()
            sizes = [len(atoms) for atoms in batch]
            results.extend(np.split(values, np.cumsum(sizes)[:-1]))
    return results


def _batches(frames: Sequence[Atoms], batch_atoms: int) -> list[list[Atoms]]:
    batches: list[list[Atoms]] = [[]]
    count = 0
    for atoms in frames:
        if batches[-1] and count + len(atoms) > batch_atoms:
            batches.append([])
            count = 0
        batches[-1].append(atoms)
        count += len(atoms)
    return batches


def feature_names(spec: DescriptorSpec) -> list[str]:
    """Human-readable names of the features, in order."""
    if spec.kind == 'chebyshev':
        names = [f'radial_T{a}' for a in range(spec.n_radial)] + [f'angular_T{a}' for a in range(spec.n_angular)]
        if len(spec.species) > 1:
            names += [f'radial_w_T{a}' for a in range(spec.n_radial)]
            names += [f'angular_w_T{a}' for a in range(spec.n_angular)]
        return names
    names = []
    for symbol in spec.species:
        names.append(f'G1[{symbol}]')
        names += [f'G2[{symbol}](eta={eta:g},Rs={rs:g})' for eta, rs in spec.g2]
    for k, b in enumerate(spec.species):
        for a in spec.species[: k + 1]:
            names += [f'G4[{a}{b}](eta={eta:g},zeta={z:g},lambda={lam:g})' for eta, z, lam in spec.g4]
    return names
