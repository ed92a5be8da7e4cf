"""Sphinx configuration of the aiida-mlmat documentation (MyST Markdown)."""

project = 'aiida-mlmat'
author = 'aiida-mlmat developers'
extensions = ['myst_parser', 'sphinx.ext.autodoc', 'sphinx.ext.napoleon', 'sphinx_click']
myst_enable_extensions = ['colon_fence', 'deflist']
source_suffix = {'.md': 'markdown'}
exclude_patterns = ['_build']
html_theme = 'furo'
