"""Atomic neural-network potential on the descriptors of :mod:`aiida_mlmat.ml.descriptors` (imports no aiida).

E = sum_i [ e_ref(Z_i) + NN_{Z_i}( (D_i - mu) / sigma ) ], forces F = -dE/dR by autograd, stress
sigma = (1/V) dE/d(strain) at zero strain (ASE's sign convention). Per-element reference energies e_ref come from
a least-squares fit of total energies to composition; mu and sigma normalise the descriptor features.

Architectures are registered by name in :data:`ARCHITECTURES`, so other models (message passing, MACE) plug in
without touching the workflows: each takes a config dictionary and maps a :class:`Graph` to named tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from aiida_mlmat.ml import keys
from aiida_mlmat.ml.descriptors import Descriptor, DescriptorSpec, sorted_species
from aiida_mlmat.ml.neighbours import Graph

ACTIVATIONS: dict[str, Callable[[], torch.nn.Module]] = {'silu': torch.nn.SiLU, 'tanh': torch.nn.Tanh}


def default_config(species: list[str]) -> dict[str, Any]:
    """A small default configuration for a chemical system."""
    return {
        'architecture': 'ann',
        'species': sorted_species(species),
        'descriptor': {'kind': 'chebyshev', 'rcut': 5.0, 'n_radial': 10, 'n_angular': 6},
        'hidden': [64, 64],
        'activation': 'silu',
    }


class AtomicNNPotential(torch.nn.Module):
    """Behler-Parrinello-style network: one MLP per element on normalised Chebyshev/ACSF descriptors."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)
        species = sorted_species(config['species'])
        descriptor = {**config['descriptor'], 'species': species}
        self.spec = DescriptorSpec.from_dict(descriptor)
        self.descriptor = Descriptor(self.spec)
        n_features = self.spec.n_features
        activation = ACTIVATIONS[config.get('activation', 'silu')]
        self.networks = torch.nn.ModuleList()
        for _ in species:
            layers: list[torch.nn.Module] = []
            width = n_features
            for hidden in config.get('hidden', [64, 64]):
                layers += [torch.nn.Linear(width, hidden), activation()]
                width = hidden
            layers.append(torch.nn.Linear(width, 1))
            self.networks.append(torch.nn.Sequential(*layers))
        self.register_buffer('reference_energies', torch.zeros(len(species), dtype=torch.float64))
        self.register_buffer('feature_mean', torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer('feature_std', torch.ones(n_features, dtype=torch.float64))
        self.species = species

    @property
    def cutoff(self) -> float:
        """Interaction cutoff in Å."""
        return self.spec.rcut

    def atomic_energies(self, graph: Graph) -> torch.Tensor:
        """Energy of each atom (eV): reference energy plus the network's output."""
        return self.energies_from_features(self.descriptor(graph), graph.numbers)

    def energies_from_features(self, features: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """Energy of each atom (eV) from its raw descriptors (n_atoms, n_features) and atomic numbers."""
        dtype = features.dtype
        features = (features - self.feature_mean.to(dtype)) / self.feature_std.to(dtype)
        element = self.descriptor.species_index[numbers]
        out = self.reference_energies.to(dtype)[element].clone()
        for position, network in enumerate(self.networks):
            mask = element == position
            if mask.any():
                out = out.index_put(
                    (torch.nonzero(mask).squeeze(1),), network(features[mask]).squeeze(1), accumulate=True
                )
        return out

    def forward(
        self, graph: Graph, forces: bool = True, stress: bool = False, training: bool = False
    ) -> dict[str, torch.Tensor]:
        """Energies (eV), and on request forces (eV/Å) and stress (eV/Å^3) of every structure of the graph.

        :param training: keep the graph of the derivatives so that a loss on forces/stress can be backpropagated.
        """
        inputs: list[torch.Tensor] = []
        strain = None
        if stress:
            strain = torch.zeros(graph.n_structures, 3, 3, dtype=graph.positions.dtype, device=graph.positions.device)
            strain.requires_grad_(True)
            graph = graph.strained(strain)
        if forces and not graph.positions.requires_grad:
            graph.positions.requires_grad_(True)
        if forces:
            inputs.append(graph.positions)
        if stress:
            inputs.append(strain)
        atomic = self.atomic_energies(graph)
        energy = _structure_sums(atomic, graph)
        result = {keys.ENERGY: energy, keys.ATOMIC_ENERGIES: atomic}
        if inputs:
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=training)
            if forces:
                result[keys.FORCES] = -grads[0]
            if stress:
                result[keys.STRESS] = _stress(grads[-1], graph)
        return result

    def forward_precomputed(
        self, graph: Graph, jacobian: EdgeJacobian, forces: bool = True, stress: bool = False, training: bool = False
    ) -> dict[str, torch.Tensor]:
        """What :meth:`forward` returns, from descriptors and derivatives computed once (:func:`edge_jacobian`).

        The descriptors of fixed configurations do not change while the network trains, so a training step only
        needs the network's gradient with respect to them, chained with the stored derivatives: with
        w_e = dE/dr_e = sum_a dE/dD_{c(e)a} dD_{c(e)a}/dr_e over the edges e (centre c, neighbour n),
        F_k = sum_{e: c(e)=k} w_e - sum_{e: n(e)=k} w_e and the virial is sum_e r_e (x) w_e. The numbers equal
        :meth:`forward`'s to rounding.
        """
        features = jacobian.features.detach().requires_grad_(forces or stress)
        atomic = self.energies_from_features(features, graph.numbers)
        energy = _structure_sums(atomic, graph)
        result = {keys.ENERGY: energy, keys.ATOMIC_ENERGIES: atomic}
        if forces or stress:
            (gradient,) = torch.autograd.grad(energy.sum(), features, create_graph=training)
            weights = (jacobian.values * gradient[graph.centre][:, None, :]).sum(dim=2)  # dE/dr_e (eV/Å)
            if forces:
                result[keys.FORCES] = (
                    torch.zeros_like(graph.positions)
                    .index_add(0, graph.centre, weights)
                    .index_add(0, graph.neighbour, -weights)
                )
            if stress:
                per_edge = jacobian.vectors[:, :, None] * weights[:, None, :]
                virial = torch.zeros(graph.n_structures, 3, 3, dtype=weights.dtype, device=weights.device)
                result[keys.STRESS] = _stress(virial.index_add(0, graph.structure[graph.centre], per_edge), graph)
        return result


@dataclass
class EdgeJacobian:
    """Descriptors of a fixed graph and their derivatives with respect to its edge vectors.

    :ivar features: (n_atoms, n_features) raw descriptors.
    :ivar vectors: (n_edges, 3) Å, the edge vectors r_ij the derivatives were taken at.
    :ivar values: (n_edges, 3, n_features) 1/Å (per descriptor unit): d D_{c(e)} / d r_e for every edge e.
    """

    features: torch.Tensor
    vectors: torch.Tensor
    values: torch.Tensor

    @staticmethod
    def nbytes(n_edges: int, n_features: int, dtype: torch.dtype) -> int:
        """Memory (bytes) the derivatives of ``n_edges`` edges take."""
        return n_edges * n_features * 3 * torch.empty((), dtype=dtype).element_size()


def edge_jacobian(descriptor: Descriptor, graph: Graph) -> EdgeJacobian:
    """Descriptors of ``graph`` and their derivatives with respect to every edge vector, one backward per feature.

    An edge vector r_e enters only the descriptors of its centre atom, so the gradient of the column sum
    sum_i D_ia with respect to r_e is d D_{c(e)a} / d r_e: n_features backward passes give the whole Jacobian.
    """
    vectors = graph.edge_vectors().detach().requires_grad_(True)
    with torch.enable_grad():
        features = descriptor(graph, vectors)
        columns = []
        for column in range(features.shape[1]):
            (grad,) = torch.autograd.grad(
                features[:, column].sum(), vectors, retain_graph=column < features.shape[1] - 1, allow_unused=True
            )
            columns.append(torch.zeros_like(vectors) if grad is None else grad)
    values = torch.stack(columns, dim=2) if columns else vectors.new_zeros(len(vectors), 3, 0)
    return EdgeJacobian(features.detach(), vectors.detach(), values.detach())


def _structure_sums(atomic: torch.Tensor, graph: Graph) -> torch.Tensor:
    """Per-structure sums (n_structures,) of per-atom values."""
    return torch.zeros(graph.n_structures, dtype=atomic.dtype, device=atomic.device).index_add(
        0, graph.structure, atomic
    )


def _stress(virial: torch.Tensor, graph: Graph) -> torch.Tensor:
    """Voigt stress (n_structures, 6) in eV/Å^3 from dE/d(strain) (n_structures, 3, 3), symmetrised."""
    volume = torch.linalg.det(graph.cells).abs().detach()
    full = virial / volume.clamp(min=1e-12)[:, None, None]
    full = 0.5 * (full + full.transpose(1, 2))
    return torch.stack(
        [full[:, 0, 0], full[:, 1, 1], full[:, 2, 2], full[:, 1, 2], full[:, 0, 2], full[:, 0, 1]], dim=1
    )


ARCHITECTURES: dict[str, type[torch.nn.Module]] = {'ann': AtomicNNPotential}


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """Instantiate a registered architecture from its config dictionary."""
    name = config.get('architecture', 'ann')
    if name not in ARCHITECTURES:
        raise ValueError(f'unknown architecture `{name}`; registered: {", ".join(sorted(ARCHITECTURES))}')
    return ARCHITECTURES[name](config)


def save_model(model: torch.nn.Module, path: str) -> None:
    """Save a model as a state dict plus its config (plain data, loadable with ``weights_only=True``)."""
    import os
    import tempfile

    payload = {'config': model.config, 'state_dict': model.state_dict(), 'format': 'aiida-mlmat-potential/1'}
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, suffix='.tmp')
    os.close(handle)
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_model(path: str, map_location: str | torch.device = 'cpu') -> torch.nn.Module:
    """Load a model saved by :func:`save_model`; never unpickles code (``weights_only=True``)."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get('format') != 'aiida-mlmat-potential/1':
        raise ValueError(f'{path} is not an aiida-mlmat potential file')
    model = build_model(payload['config'])
    model.load_state_dict(payload['state_dict'])
    return model.to(map_location)
