"""AiiDA Data plugins of aiida-mlmat."""

from .configurations import ConfigurationSetData

__all__ = ('ConfigurationSetData',)
