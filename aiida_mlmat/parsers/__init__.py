"""Parsers of aiida-mlmat: one per CalcJob, sharing its entry-point name."""
