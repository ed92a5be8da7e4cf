"""Atomic neural-network potential on the descriptors of :mod:`aiida_mlmat.ml.descriptors` (imports no aiida).

E = sum_i [ e_ref(Z_i) + NN_{Z_i}( (D_i - mu) / sigma ) ], forces F = -dE/dR by autograd, stress
sigma = (1/V) dE/d(strain) at zero strain (ASE's sign convention). Per-element reference energies e_ref come from
a least-squares fit of total energies to composition; mu and sigma normalise the descriptor features.

Architectures are registered by name in :data:`ARCHITECTURES`, so other models (message passing, MACE) plug in
without touching the workflows: each takes a config dictionary and maps a :class:`Graph` to named tensors.
"""

from __future__ import annotations

from collections.abc import Callable
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
        features = self.descriptor(graph)
        dtype = features.dtype
        features = (features - self.feature_mean.to(dtype)) / self.feature_std.to(dtype)
        element = self.descriptor.species_index[graph.numbers]
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
        energy = torch.zeros(graph.n_structures, dtype=atomic.dtype, device=atomic.device).index_add(
            0, graph.structure, atomic
        )
        result = {keys.ENERGY: energy, keys.ATOMIC_ENERGIES: atomic}
        if inputs:
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=training)
            if forces:
                result[keys.FORCES] = -grads[0]
            if stress:
                volume = torch.linalg.det(graph.cells).abs().detach()
                virial = grads[-1]
                full = virial / volume.clamp(min=1e-12)[:, None, None]
                full = 0.5 * (full + full.transpose(1, 2))
                result[keys.STRESS] = torch.stack(
                    [full[:, 0, 0], full[:, 1, 1], full[:, 2, 2], full[:, 1, 2], full[:, 0, 2], full[:, 0, 1]], dim=1
                )
        return result


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
