"""Command line: ``mlmat ...`` and ``verdi data mlmat ...``. Commands import aiida lazily so ``--help`` is fast."""
