"""The ``mlmat`` command line."""

from __future__ import annotations

import sys

import click

from aiida_mlmat.cli.utils import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    ClosedPipe,
    FiniteFloatRange,
    GreedyOption,
    JsonErrorGroup,
    MlmatCliError,
    echo_json,
    put_own_bin_on_path,
)
from aiida_mlmat.common.constants import MIN_INTERATOMIC_DISTANCE
from aiida_mlmat.workflows.protocols import MAX_ENSEMBLE_SIZE

PROTOCOLS = ('fast', 'balanced', 'precise')
#: The longest walltime of a training job that ``--max-minutes`` takes: one year (a larger value is a typo, and
#: its seconds would overflow the scheduler's and the database's integers).
MAX_JOB_MINUTES = 365 * 24 * 60


@click.group(cls=JsonErrorGroup, context_settings={'help_option_names': ['-h', '--help']})
@click.option('-p', '--profile', 'profile', default=None, help='AiiDA profile to use (default: the default profile).')
@click.version_option(package_name='aiida-mlmat')
@click.pass_context
def cli(ctx: click.Context, profile: str | None) -> None:
    """aiida-mlmat: machine-learning-potential workflows with full provenance."""
    put_own_bin_on_path()
    ctx.ensure_object(dict)
    ctx.obj['profile'] = profile


@cli.command('setup')
@click.option('--profile', 'setup_profile', default=None, help='Profile to use or make (default: current, or new).')
@click.option('--gpaw-python', default=None, help='Python interpreter that imports GPAW (found if not given).')
@click.option(
    '--slurm-host', default=None, help='Also register the SLURM Computer `slurm-ssh` reached over ssh at HOST.'
)
@click.option('--slurm-user', default=None, help='User name on the SLURM host (default: the current user).')
@click.option('--slurm-key', default=None, help='Private ssh key for the SLURM host (default: ~/.ssh/id_ed25519).')
@click.option('--slurm-partition', default=None, help="SLURM partition to store on the Computer ('' clears it).")
@click.option(
    '--slurm-port',
    type=click.IntRange(1, 65535),
    default=None,
    help='ssh port of the SLURM host (default 22); its key must be in known_hosts as [HOST]:PORT.',
)
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def setup_cmd(
    ctx: click.Context,
    setup_profile: str | None,
    gpaw_python: str | None,
    slurm_host: str | None,
    slurm_user: str | None,
    slurm_key: str | None,
    slurm_partition: str | None,
    slurm_port: int | None,
    json_output: bool,
) -> None:
    """Set up a profile, the localhost Computer and the Codes, and optionally a SLURM Computer (idempotent)."""
    from aiida_mlmat.cli.setup import run_setup

    result = run_setup(
        setup_profile or ctx.obj.get('profile'),
        gpaw_python,
        slurm_host=slurm_host,
        slurm_user=slurm_user,
        slurm_key=slurm_key,
        slurm_partition=slurm_partition,
        slurm_port=slurm_port,
    )
    if json_output:
        echo_json(result)
        return
    click.echo(f'profile: {result["profile"]} ({result["storage"]}, broker {result["broker"]})')
    click.echo(f'computer: {result["computer"]["label"]} (pk {result["computer"]["pk"]})')
    for key, code in result['codes'].items():
        click.echo(f'code {key}: {code["label"]} (pk {code["pk"]})')
    if result.get('slurm'):
        click.echo(f'computer: {result["slurm"]["computer"]["label"]} (pk {result["slurm"]["computer"]["pk"]})')
        for key, code in result['slurm']['codes'].items():
            click.echo(f'code {key}: {code["label"]} (pk {code["pk"]})')
    if not result['gpaw_python']:
        click.echo('no Python with GPAW found: the DFT path needs `--gpaw-python PATH`')


@cli.command('reference')
@click.option('--elements', cls=GreedyOption, help='Chemical system, e.g. `--elements Cu Au`.')
@click.option('--structures', 'structure_files', cls=GreedyOption, help='Seed structure files (CIF, POSCAR, extxyz).')
@click.option('--calculator', required=True, help='Registry calculator for the labels: emt, lj, gpaw, ...')
@click.option('--calculator-params', default=None, help='Keyword arguments of the calculator as a JSON object.')
@click.option(
    '--protocol',
    type=click.Choice(PROTOCOLS),
    default='fast',
    show_default=True,
    help='Preset of sampling and labelling settings (docs/howto/reference-data.md); --overrides changes any of them.',
)
@click.option(
    '--labeller',
    type=click.Choice(['batch', 'aiida-ase']),
    default='batch',
    show_default=True,
    help='batch: mlmat.label jobs of --chunk-size configurations each; aiida-ase: one ase.ase job per configuration.',
)
@click.option(
    '--computer', default=None, help='Computer whose Codes run the jobs (default: localhost, or that of --code).'
)
@click.option(
    '--code',
    default=None,
    help='The worker Code that runs the jobs (default: mlmat-worker@COMPUTER; for gpaw mlmat-worker-gpaw@COMPUTER).',
)
@click.option('--chunk-size', type=click.IntRange(min=1), default=None, help='Configurations per label job.')
@click.option(
    '--select',
    'select_n',
    type=click.IntRange(min=3),
    default=None,
    help='Label only the N most diverse (at least 3: a set to train on is split three ways).',
)
@click.option('--overrides', default=None, help='JSON object merged into the protocol inputs.')
@click.option('--wait', is_flag=True, help='Block until the workflow ends, showing progress.')
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def reference_cmd(ctx: click.Context, **kwargs: object) -> None:
    """Generate a labelled reference data set (workflow ``mlmat.reference``)."""
    from aiida_mlmat.cli.commands import reference

    reference(ctx.obj.get('profile'), **kwargs)


@cli.command('descriptors')
@click.argument('source')
@click.option(
    '--kind',
    type=click.Choice(['chebyshev', 'acsf']),
    default='chebyshev',
    show_default=True,
    help='Chebyshev (Artrith-Urban-Ceder, species-weighted) or ACSF (G1, G2, G4 as DScribe computes them).',
)
@click.option(
    '--rcut',
    type=FiniteFloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help=f'Cutoff radius in Å (at least {MIN_INTERATOMIC_DISTANCE:g} Å).',
)
@click.option('--out', 'out', type=click.Path(dir_okay=False), default=None, help='Write the arrays to FILE.npz.')
@click.option('--map', 'map_png', type=click.Path(dir_okay=False), default=None, help='Write a PCA map PNG.')
@click.option('--colour', default=None, help='Map colour: `energy` or `composition:EL` (default: first element).')
@click.option(
    '--dtype', type=click.Choice(['float32', 'float64']), default='float64', show_default=True, help='Precision.'
)
@click.option(
    '--device',
    type=click.Choice(['auto', 'cpu', 'cuda']),
    default='auto',
    show_default=True,
    help='Where to compute: auto takes a CUDA GPU when the worker (for a FILE, this process) sees one.',
)
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def descriptors_cmd(ctx: click.Context, **kwargs: object) -> None:
    """Descriptors of an extxyz FILE (computed here) or of a configuration set PK (as a recorded CalcJob)."""
    from aiida_mlmat.cli.commands import descriptors

    descriptors(ctx.obj.get('profile'), **kwargs)


@cli.command('train')
@click.argument('dataset_identifier')
@click.option(
    '--ensemble',
    type=click.IntRange(min=1, max=MAX_ENSEMBLE_SIZE),  # each member is a training job: bounded as the protocols are
    default=None,
    help=f'Number of ensemble members K (1 to {MAX_ENSEMBLE_SIZE}).',
)
@click.option(
    '--protocol',
    type=click.Choice(PROTOCOLS),
    default='fast',
    show_default=True,
    help='Preset of model and training settings (docs/howto/training.md); --overrides changes any of them.',
)
@click.option(
    '--computer', default=None, help='Computer whose worker Code trains (default: localhost, or that of --code).'
)
@click.option('--code', default=None, help='The worker Code that trains (default: mlmat-worker@COMPUTER).')
@click.option(
    '--device',
    type=click.Choice(['auto', 'cpu', 'cuda']),
    default='auto',
    show_default=True,
    help='Where each member trains: auto takes a CUDA GPU when the training job sees one.',
)
@click.option('--gpus', type=click.IntRange(min=0), default=0, help='GPUs per job (SLURM --gres=gpu:N).')
@click.option(
    '--max-minutes',
    type=FiniteFloatRange(min=0.1, max=MAX_JOB_MINUTES),
    default=None,
    help='Walltime of each training job in minutes.',
)
@click.option('--overrides', default=None, help='JSON object merged into the protocol inputs.')
@click.option('--wait', is_flag=True, help='Block until the workflow ends, showing progress.')
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def train_cmd(ctx: click.Context, **kwargs: object) -> None:
    """Train an ensemble potential on the configuration set DATASET_PK (workflow ``mlmat.training``)."""
    from aiida_mlmat.cli.commands import train

    train(ctx.obj.get('profile'), **kwargs)


@cli.group('potential')
def potential() -> None:
    """Inspect, evaluate and export trained potentials."""


@potential.command('list')
@click.option('--limit', type=int, default=50, show_default=True, help='How many, newest first.')
@click.option('--members', is_flag=True, help='Also list the single models that went into an ensemble.')
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def potential_list(ctx: click.Context, limit: int, members: bool, json_output: bool) -> None:
    """List the potentials of the profile, newest first: PK, members, species, test force and energy RMSE."""
    from aiida_mlmat.cli.commands import potential_list as run

    run(ctx.obj.get('profile'), limit, members, json_output)


@potential.command('show')
@click.argument('identifier')
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def potential_show(ctx: click.Context, identifier: str, json_output: bool) -> None:
    """Summarise the potential POT (PK, UUID or label): members, test metrics, training set, reference calculators."""
    from aiida_mlmat.cli.commands import potential_show as run

    run(ctx.obj.get('profile'), identifier, json_output)


@potential.command('evaluate')
@click.argument('identifier')
@click.argument('file', type=click.Path(dir_okay=False))
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def potential_evaluate(ctx: click.Context, identifier: str, file: str, json_output: bool) -> None:
    """Errors of the potential POT_PK on the labelled configurations in an extxyz FILE."""
    from aiida_mlmat.cli.commands import potential_evaluate as run

    run(ctx.obj.get('profile'), identifier, file, json_output)


@potential.command('export')
@click.argument('identifier')
@click.argument('directory', type=click.Path(file_okay=False))
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def potential_export(ctx: click.Context, identifier: str, directory: str, json_output: bool) -> None:
    """Write the member weights, a model card and loading instructions into DIRECTORY."""
    from aiida_mlmat.cli.commands import potential_export as run

    run(ctx.obj.get('profile'), identifier, directory, json_output)


@cli.group('dataset')
def dataset() -> None:
    """Import, export and inspect configuration sets."""


@dataset.command('import')
@click.argument('file', type=click.Path(dir_okay=False))
@click.option('--label', default='', help='Label of the stored node.')
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def dataset_import(ctx: click.Context, file: str, label: str, json_output: bool) -> None:
    """Store an extxyz FILE as a configuration set (refused whole if any frame is corrupt or unphysical)."""
    from aiida_mlmat.cli.commands import dataset_import as run

    run(ctx.obj.get('profile'), file, label, json_output)


@dataset.command('export')
@click.argument('identifier')
@click.argument('file', type=click.Path(dir_okay=False))
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def dataset_export(ctx: click.Context, identifier: str, file: str, json_output: bool) -> None:
    """Write the configuration set PK (or UUID) to an extxyz FILE."""
    from aiida_mlmat.cli.commands import dataset_export as run

    run(ctx.obj.get('profile'), identifier, file, json_output)


@dataset.command('show')
@click.argument('identifier')
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def dataset_show(ctx: click.Context, identifier: str, json_output: bool) -> None:
    """Summarise the configuration set PK (or UUID)."""
    from aiida_mlmat.cli.commands import dataset_show as run

    run(ctx.obj.get('profile'), identifier, json_output)


@dataset.command('used-by')
@click.argument('identifier')
@click.argument('index', type=int)
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def dataset_used_by(ctx: click.Context, identifier: str, index: int, json_output: bool) -> None:
    """The potentials that configuration INDEX (from 0) of the set PK (or UUID) went into, and how: fitted to it
    (train), steering early stopping (validation), or inherited through a warm start."""
    from aiida_mlmat.cli.commands import dataset_used_by as run

    run(ctx.obj.get('profile'), identifier, index, json_output)


from aiida_mlmat.cli.pipeline import report_cmd, run_cmd  # noqa: E402
from aiida_mlmat.cli.screen import screen_cmd  # noqa: E402

cli.add_command(screen_cmd)
cli.add_command(run_cmd)
cli.add_command(report_cmd)

from aiida_mlmat.cli.provenance import export_cmd, import_cmd, provenance_cmd  # noqa: E402

cli.add_command(provenance_cmd)
cli.add_command(export_cmd)
cli.add_command(import_cmd)


def main() -> None:
    """Console-script entry point; turns our errors into clean messages and banded exit codes."""
    try:
        cli.main(standalone_mode=False, prog_name='mlmat')
    except MlmatCliError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo('aborted', err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_INVALID_INPUT)
    except ClosedPipe:
        sys.exit(EXIT_BROKEN_PIPE)
    sys.exit(0)
