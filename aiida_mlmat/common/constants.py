"""Constants shared by both sides: units, file names, key names, limits."""

from __future__ import annotations

#: Units of every stored quantity. Every output key that carries a number is in one of these.
UNITS: dict[str, str] = {
    'energy': 'eV',
    'forces': 'eV/Å',
    'stress': 'eV/Å^3',
    'length': 'Å',
    'temperature': 'K',
    'time': 'fs',
}

#: Units of error metrics by the quantity their key starts with (``energy_rmse_per_atom``, ``forces_mae``, ...).
METRICS_UNITS: dict[str, str] = {'energy': 'eV/atom', 'forces': 'eV/Å', 'stress': 'eV/Å^3'}


def metric_unit(key: str, units: dict[str, str] | None = None) -> str:
    """The unit of the metric ``key`` (``forces_rmse`` -> ``eV/Å``), '' for a count or an unknown key."""
    table = units or METRICS_UNITS
    return next((table[kind] for kind in table if key.startswith(kind)), '')


#: Label keys a labelled configuration may carry.
LABEL_KEYS: tuple[str, ...] = ('energy', 'forces', 'stress')

#: Name of the info key holding the index of a configuration in the set it was taken from.
INDEX_KEY = 'mlmat_index'
#: Name of the info key holding how a sampled configuration was made (``seed``, ``rattle``, ``strain`` ...).
METHOD_KEY = 'mlmat_method'
#: Name of the info key holding the index of the seed a sampled configuration descends from.
SEED_KEY = 'mlmat_seed'

#: Training defaults the AiiDA side needs too (the restart handler halves them after an out-of-memory failure):
#: configurations per batch, and the memory (MiB) that stored descriptor derivatives may take.
DEFAULT_BATCH_SIZE = 8
DEFAULT_JACOBIAN_MEMORY_MB = 2048.0

#: Two atoms closer than this (Å) make a configuration unphysical: it is refused or excluded.
MIN_INTERATOMIC_DISTANCE = 0.5

#: Files of the CalcJob-worker protocol.
INPUT_JSON = 'input.json'
RESULTS_JSON = 'results.json'
STRUCTURES_FILE = 'structures.extxyz'
PREVIOUS_FILE = 'previous.extxyz'
PREVIOUS_EXCLUDED_FILE = 'previous_excluded.json'
LABELLED_FILE = 'labelled.extxyz'
EXCLUDED_FILE = 'excluded.jsonl'
#: Folder of the text logs of the configurations a calculator failed on (GPAW's SCF log), retrieved.
CALCULATOR_LOGS = 'calculator-logs'
SAMPLED_FILE = 'sampled.extxyz'
DESCRIPTORS_FILE = 'descriptors.npz'

#: Computer property holding the SLURM partition (``mlmat setup --slurm-partition``): every mlmat CalcJob on that
#: Computer given no ``metadata.options.queue_name`` is submitted to it (AiiDA has no per-Computer default queue).
PARTITION_PROPERTY = 'mlmat_queue_name'

#: Folder of a job into which the CalcJob input ``potential`` is exported (read by the calculator ``mlmat``).
POTENTIAL_DIR = 'potential'
#: Frame info keys written by MD with an ensemble: committee force disagreement (eV/Å) and energy spread (eV).
DISAGREEMENT_KEY = 'mlmat_disagreement'
ENERGY_STD_KEY = 'mlmat_energy_std'
RELAXED_FILE = 'relaxed.extxyz'
#: Frame info key of a structure's name (a candidate's file stem or generated name).
NAME_KEY = 'mlmat_name'

#: Labels of the worker Codes ``mlmat setup`` registers: the package's own Python (torch: every task), and a Python
#: with GPAW and without torch (sampling and labelling with GPAW only).
WORKER_CODE = 'mlmat-worker'
GPAW_WORKER_CODE = 'mlmat-worker-gpaw'
#: Extra of a worker Code saying whether its Python has torch (``mlmat setup`` sets it False on the GPAW worker
#: Code); where it is not set, a Code labelled :data:`GPAW_WORKER_CODE` is taken to have none.
TORCH_EXTRA = 'mlmat_torch'
