"""metaeval.validity: does a metric rank an explanation that matches the model's known
mechanism above one that does not? Testbeds with analytic mechanisms and a report card.
"""

from .testbed import MECHANISMS, Candidate, ExplainFn, OrderedPair, Testbed

__all__ = ["MECHANISMS", "Candidate", "ExplainFn", "OrderedPair", "Testbed"]
