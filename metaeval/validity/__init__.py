"""metaeval.validity: does a metric rank an explanation that matches the model's known
mechanism above one that does not? Testbeds with analytic mechanisms and a report card.
"""

from .testbed import MECHANISMS, Candidate, ExplainFn, OrderedPair, Testbed

__all__ = ["MECHANISMS", "Candidate", "ExplainFn", "OrderedPair", "Testbed"]

# the report engine: validity_report(metrics, testbeds) -> ValidityReport (docs/validity.md)
from evalkit.testing import register_check

from .report import (
    VERDICTS,
    ReportCard,
    ValidityReport,
    combine,
    validity_check,
    validity_report,
)

__all__ += ["VERDICTS", "ReportCard", "ValidityReport", "combine", "validity_check",
            "validity_report"]

# check_metric(metric, checks=[..., "validity"]) runs the direction-sanity check on the testbeds
register_check("validity", validity_check)
