"""Moved to `rlaif.stages.filter.pairs`."""

import sys

from rlaif.deprecation import moved

sys.modules[__name__] = moved(__name__, "rlaif.stages.filter.pairs")
