"""AiiDA Data plugins of aiida-mlmat."""

from .configurations import ConfigurationSetData
from .descriptors import DescriptorsData
from .potential import PotentialData

__all__ = ('ConfigurationSetData', 'DescriptorsData', 'PotentialData')
