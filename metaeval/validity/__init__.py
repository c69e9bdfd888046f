"""metaeval.validity: does a metric rank an explanation that matches the model's known
mechanism above one that does not? Testbeds with analytic mechanisms and a report card.
"""

from .testbed import MECHANISMS, Candidate, ExplainFn, OrderedPair, Testbed

__all__ = ["MECHANISMS", "Candidate", "ExplainFn", "OrderedPair", "Testbed"]

# the library of known-mechanism testbeds, and the user's own check on their inputs
from . import testbeds
from .plant import PLANTABLE, plant_mechanism
from .testbeds import build_testbed, list_testbeds

__all__ += ["PLANTABLE", "build_testbed", "list_testbeds", "plant_mechanism", "testbeds"]
