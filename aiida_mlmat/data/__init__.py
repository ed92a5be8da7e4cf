"""AiiDA Data plugins of aiida-mlmat."""

from .configurations import ConfigurationSetData
from .descriptors import DescriptorsData

__all__ = ('ConfigurationSetData', 'DescriptorsData')
