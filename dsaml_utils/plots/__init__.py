"""Figures and tables of every stage, each stamped with the data, preset, seed and code that produced it.

The notebooks call ``plots.<function>``; the functions live in ``base`` (saving, provenance, tables),
``data`` (dataset figures), ``results`` (models and results) and ``paper`` (the paper's reported numbers).
"""

from dsaml_utils.plots.base import *  # noqa: F401,F403
from dsaml_utils.plots.data import *  # noqa: F401,F403
from dsaml_utils.plots.paper import *  # noqa: F401,F403
from dsaml_utils.plots.results import *  # noqa: F401,F403
