"""
The hypothesis profiles every txconsul property test runs under.

Importing this module registers them and loads the one named by
``HYPOTHESIS_PROFILE`` (``ci`` when unset): no deadline, because the test
machine is small and shared and a slow example is not a failure; derandomized,
so a run is the same on every machine and a failure replays; no example
database written into the work tree. ``HYPOTHESIS_PROFILE=explore`` draws fresh
random examples instead, for a local hunt.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    # trial does not show the parts of an ExceptionGroup: report one failure
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "explore",
    parent=settings.get_profile("ci"),
    derandomize=False,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
