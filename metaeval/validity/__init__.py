"""metaeval.validity: does a metric rank an explanation that matches the model's known
mechanism above one that does not? Testbeds with analytic mechanisms and a report card.
"""

from evalkit.testing import register_check

# the library of known-mechanism testbeds, and the user's own check on their inputs
from . import testbeds
from .plant import PLANTABLE, plant_mechanism

# the report engine: validity_report(metrics, testbeds) -> ValidityReport (docs/validity.md)
from .report import (
    VERDICTS,
    ReportCard,
    ValidityReport,
    combine,
    validity_check,
    validity_report,
)
from .testbed import MECHANISMS, Candidate, ExplainFn, OrderedPair, Testbed
from .testbeds import build_testbed, list_testbeds

__all__ = ["MECHANISMS", "Candidate", "ExplainFn", "OrderedPair", "Testbed"]
__all__ += ["VERDICTS", "ReportCard", "ValidityReport", "combine", "validity_check",
            "validity_report"]
__all__ += ["PLANTABLE", "build_testbed", "list_testbeds", "plant_mechanism", "testbeds"]

# check_metric(metric, checks=[..., "validity"]) runs the direction-sanity check on the testbeds
register_check("validity", validity_check)
