"""WorkChains of aiida-mlmat."""
