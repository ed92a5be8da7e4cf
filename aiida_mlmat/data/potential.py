"""Data plugin ``mlmat.potential``: a trained potential, one model or an ensemble of K members.

Each member is a file ``member_<k>.pt`` in the repository holding a state dict and the model config (plain data,
loaded with ``torch.load(weights_only=True)``, never a pickled model). Attributes: architecture, species, cutoff
(Å), the model config, the sha256 of every member file (checked on every load), metrics (eV/atom, eV/Å, eV/Å^3)
and the sha256 of the training data.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiida import orm


class PotentialIntegrityError(ValueError):
    """A member file whose bytes do not match the recorded sha256."""


class PotentialData(orm.Data):
    """A trained (ensemble) potential with its provenance attributes."""

    def __init__(
        self,
        members: Sequence[bytes] | None = None,
        *,
        config: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if members is None:
            return
        if not members:
            raise ValueError('a potential needs at least one member')
        if config is None:
            raise ValueError('the model config is required')
        hashes = []
        for index, content in enumerate(members):
            self.base.repository.put_object_from_bytes(content, f'member_{index}.pt')
            hashes.append(hashlib.sha256(content).hexdigest())
        descriptor = config.get('descriptor', {})
        self.base.attributes.set_many(
            {
                'architecture': config.get('architecture', 'ann'),
                'species': list(config['species']),
                'cutoff': float(descriptor.get('rcut', 0.0)),
                'config': dict(config),
                'n_members': len(members),
                'sha256': hashes,
                'metrics': dict(metrics or {}),
                'units': {'energy': 'eV', 'forces': 'eV/Å', 'stress': 'eV/Å^3', 'length': 'Å'},
                **(extra or {}),
            }
        )

    @property
    def n_members(self) -> int:
        """Number of ensemble members."""
        return self.base.attributes.get('n_members')

    @property
    def species(self) -> list[str]:
        """Species the potential was trained on."""
        return list(self.base.attributes.get('species'))

    @property
    def metrics(self) -> dict[str, Any]:
        """Test metrics."""
        return dict(self.base.attributes.get('metrics', {}))

    def member_bytes(self, index: int) -> bytes:
        """Bytes of one member file, verified against its recorded sha256."""
        content = self.base.repository.get_object_content(f'member_{index}.pt', mode='rb')
        expected = self.base.attributes.get('sha256')[index]
        if hashlib.sha256(content).hexdigest() != expected:
            raise PotentialIntegrityError(f'member {index} of potential {self.pk}: sha256 mismatch, refusing to load')
        return content

    def get_models(self, device: str = 'cpu') -> list[Any]:
        """Load every member (verified, ``weights_only=True``)."""
        import torch

        from aiida_mlmat.ml.model import build_model

        models = []
        for index in range(self.n_members):
            payload = torch.load(io.BytesIO(self.member_bytes(index)), map_location=device, weights_only=True)
            model = build_model(payload['config'])
            model.load_state_dict(payload['state_dict'])
            models.append(model)
        return models

    def get_calculator(self, device: str = 'cpu') -> Any:
        """An ASE calculator (ensemble mean and spread)."""
        from aiida_mlmat.ml.calculator import MLMatCalculator

        return MLMatCalculator(self.get_models(device), device=device)

    def export(self, directory: str | Path) -> dict[str, Any]:
        """Write the member files and a model card (JSON and Markdown) into a directory; return the card."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for index in range(self.n_members):
            (directory / f'member_{index}.pt').write_bytes(self.member_bytes(index))
        card = self.card()
        (directory / 'model-card.json').write_text(json.dumps(card, indent=1))
        (directory / 'README.md').write_text(card_markdown(card))
        return card

    def card(self) -> dict[str, Any]:
        """The model card: what was trained on what, how well, and how to load it."""
        attributes = self.base.attributes.all
        return {
            'uuid': self.uuid,
            'architecture': attributes.get('architecture'),
            'species': attributes.get('species'),
            'cutoff_angstrom': attributes.get('cutoff'),
            'n_members': attributes.get('n_members'),
            'config': attributes.get('config'),
            'training': attributes.get('training', {}),
            'versions': attributes.get('versions', {}),
            'metrics': attributes.get('metrics', {}),
            'data_sha256': attributes.get('data_sha256'),
            'files': {f'member_{k}.pt': sha for k, sha in enumerate(attributes.get('sha256', []))},
            'units': attributes.get('units'),
            'load': 'from aiida_mlmat.ml.calculator import MLMatCalculator; calc = MLMatCalculator.from_directory(DIR)',
        }


def card_markdown(card: dict[str, Any]) -> str:
    """Human-readable model card."""
    lines = [
        f'# aiida-mlmat potential {card["uuid"]}',
        '',
        f'- architecture: {card["architecture"]}, species: {", ".join(card["species"])}, '
        f'cutoff {card["cutoff_angstrom"]} Å, {card["n_members"]} ensemble member(s)',
        f'- training data sha256: {card.get("data_sha256")}',
        '',
        '## Test metrics',
        '',
    ]
    from aiida_mlmat.common.constants import metric_unit

    metrics = dict(card.get('metrics') or {})
    units = metrics.pop('units', None)
    for key, value in sorted(metrics.items()):
        text = f'{value:.6g} {metric_unit(key, units)}'.rstrip() if isinstance(value, float) else str(value)
        lines.append(f'- {key}: {text}')
    training = card.get('training') or {}
    members = training.get('members') or [training]
    hyper = members[0].get('hyperparameters') if members and isinstance(members[0], dict) else None
    if hyper:
        lines += ['', '## Training hyperparameters (member 0)', '']
        lines += [f'- {key}: {value}' for key, value in sorted(hyper.items())]
        seconds = sum(m.get('seconds') or 0.0 for m in members if isinstance(m, dict))
        devices = sorted({str(m.get('device')) for m in members if isinstance(m, dict)})
        lines += ['', f'Device time: {seconds:.1f} s on {", ".join(devices)} over {len(members)} member(s).']
    if card.get('versions'):
        lines += ['', '## Versions', '']
        lines += [f'- {key}: {value}' for key, value in sorted(card['versions'].items())]
    lines += ['', '## Files (sha256)', '']
    lines += [f'- `{name}`: {sha}' for name, sha in card['files'].items()]
    lines += ['', '## Load in ASE', '', '```python', card['load'].replace('; ', '\n'), '```', '']
    return '\n'.join(lines)


def potential_from_files(paths: Sequence[str | Path], **kwargs: Any) -> PotentialData:
    """Build a node from model files written by :func:`aiida_mlmat.ml.model.save_model`."""
    import torch

    contents = [Path(path).read_bytes() for path in paths]
    payload = torch.load(io.BytesIO(contents[0]), map_location='cpu', weights_only=True)
    return PotentialData(contents, config=payload['config'], **kwargs)
