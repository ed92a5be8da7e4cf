"""Enums and constants shared by the AiiDA side and the remote worker side (imports no aiida)."""
