"""Test configuration: property-based tests are reproducible in CI (a fixed derandomized seed per test) and explore
freely elsewhere; ``HYPOTHESIS_PROFILE=ci`` selects the CI behaviour locally."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") or os.environ.get("HYPOTHESIS_PROFILE") == "ci":
    settings.load_profile("ci")
