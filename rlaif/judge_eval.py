"""Moved to `rlaif.judges.judge_eval`."""

import sys

from rlaif.deprecation import moved

sys.modules[__name__] = moved(__name__, "rlaif.judges.judge_eval")
