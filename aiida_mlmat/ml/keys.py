"""Names of the tensors that models return and of the labels they are trained on (one place, both sides)."""

ENERGY = 'energy'  # (n_structures,) eV
FORCES = 'forces'  # (n_atoms, 3) eV/Å
STRESS = 'stress'  # (n_structures, 6) eV/Å^3, Voigt order xx yy zz yz xz xy, ASE's sign
ATOMIC_ENERGIES = 'atomic_energies'  # (n_atoms,) eV
