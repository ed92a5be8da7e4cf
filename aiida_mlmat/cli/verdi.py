"""``verdi data mlmat``: aiida-mlmat's data types (configuration sets, potentials) under verdi."""

from __future__ import annotations

import click


@click.group('mlmat')
def data_mlmat() -> None:
    """Inspect aiida-mlmat data (configuration sets and potentials)."""


@data_mlmat.command('list')
@click.option('--limit', type=int, default=50, show_default=True)
def list_sets(limit: int) -> None:
    """List configuration sets: pk, count, species, label keys, calculator."""
    from aiida import orm

    from aiida_mlmat.data.configurations import ConfigurationSetData

    # the few attributes shown, not all of them: a set's attributes hold a formula per configuration
    keys = ('count', 'species', 'label_keys', 'calculator')
    query = orm.QueryBuilder().append(
        ConfigurationSetData, project=['id', *(f'attributes.{key}' for key in keys), 'label']
    )
    query.order_by({ConfigurationSetData: {'id': 'desc'}}).limit(limit)
    click.echo(f'{"pk":>6} {"count":>6} {"species":<16} {"labels":<22} {"calculator":<10} label')
    for pk, count, species, label_keys, calculator, label in query.all():
        name = (calculator or {}).get('name', '-') if isinstance(calculator, dict) else '-'
        click.echo(
            f'{pk:>6} {count or 0:>6} {"-".join(species or []):<16} {",".join(label_keys or []) or "-":<22} '
            f'{name:<10} {label}'
        )


@data_mlmat.command('potentials')
@click.option('--limit', type=int, default=50, show_default=True)
@click.option('--members', is_flag=True, help='Also list the single models that went into an ensemble.')
def list_potentials(limit: int, members: bool) -> None:
    """List potentials: pk, members, species, test errors (same as `mlmat potential list`)."""
    from aiida_mlmat.cli.commands import potential_list

    potential_list(None, limit, members, False)


@data_mlmat.command('show')
@click.argument('identifier')
def show(identifier: str) -> None:
    """Summarise a configuration set or a potential (as `mlmat dataset show` and `mlmat potential show`)."""
    from aiida_mlmat.cli.commands import dataset_show, potential_show
    from aiida_mlmat.cli.utils import load_node
    from aiida_mlmat.data.configurations import ConfigurationSetData
    from aiida_mlmat.data.potential import PotentialData

    if isinstance(load_node(identifier, (ConfigurationSetData, PotentialData)), PotentialData):
        potential_show(None, identifier, False)
    else:
        dataset_show(None, identifier, False)


@data_mlmat.command('export')
@click.argument('identifier')
@click.argument('file', type=click.Path(dir_okay=False))
def export(identifier: str, file: str) -> None:
    """Write a configuration set to extxyz."""
    from aiida_mlmat.cli.commands import dataset_export

    dataset_export(None, identifier, file, False)
