"""Human spot-check: a seeded sample of pairs, a SQLite store, a web page, agreement statistics, a gate."""

from rlaif.review.gate import GateResult, check_gate

__all__ = ["GateResult", "check_gate"]
