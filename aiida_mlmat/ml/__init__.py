"""Machine-learning side (torch; imports no aiida): descriptors, selection, models."""
