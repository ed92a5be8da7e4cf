"""``verdi data mlmat``: the configuration-set data type under verdi."""

from __future__ import annotations

import click


@click.group('mlmat')
def data_mlmat() -> None:
    """Inspect aiida-mlmat data (configuration sets)."""


@data_mlmat.command('list')
@click.option('--limit', type=int, default=50, show_default=True)
def list_sets(limit: int) -> None:
    """List configuration sets: pk, count, species, label keys, calculator."""
    from aiida import orm

    from aiida_mlmat.data.configurations import ConfigurationSetData

    query = orm.QueryBuilder().append(ConfigurationSetData, project=['id', 'attributes', 'label', 'ctime'])
    query.order_by({ConfigurationSetData: {'id': 'desc'}}).limit(limit)
    click.echo(f'{"pk":>6} {"count":>6} {"species":<16} {"labels":<22} {"calculator":<10} label')
    for pk, attributes, label, _ in query.all():
        calculator = (attributes.get('calculator') or {}).get('name', '-')
        click.echo(
            f'{pk:>6} {attributes.get("count", 0):>6} {"-".join(attributes.get("species", [])):<16} '
            f'{",".join(attributes.get("label_keys", [])) or "-":<22} {calculator:<10} {label}'
        )


@data_mlmat.command('show')
@click.argument('identifier')
def show(identifier: str) -> None:
    """Summarise a configuration set (same as `mlmat dataset show`)."""
    from aiida_mlmat.cli.commands import dataset_show

    dataset_show(None, identifier, False)


@data_mlmat.command('export')
@click.argument('identifier')
@click.argument('file', type=click.Path(dir_okay=False))
def export(identifier: str, file: str) -> None:
    """Write a configuration set to extxyz."""
    from aiida_mlmat.cli.commands import dataset_export

    dataset_export(None, identifier, file, False)
