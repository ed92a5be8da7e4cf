"""CalcJob plugins of aiida-mlmat: each writes ``input.json`` + data files for the fixed ``mlmat-worker``."""
