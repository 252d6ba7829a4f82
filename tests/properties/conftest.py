"""Hypothesis settings profiles for the property suite.

- `ci` (default): 50 examples per property, derandomized (the same examples on every run, so CI is
  deterministic) and no example database; the whole suite runs in about a minute on 2 cores.
- `dev`: like `ci` but random, with the local example database, so repeated runs explore new examples and
  replay past failures first.
- `thorough`: many examples, random; for a release or after touching archspec/nn, archspec/compiler.py or the
  spec loader.

Select one with ARCHSPEC_HYPOTHESIS_PROFILE=ci|dev|thorough (see README.md next to this file). Tests that are
slow per example (torch.compile) scale their own `max_examples` with `strategies.scaled()`.

Every model here is tiny: torch runs them on one intra-op thread (as fast as several, and on a shared 2-core
machine several spinning threads cost twice the wall time of the whole suite).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

settings.register_profile("ci", max_examples=50, derandomize=True, database=None, print_blob=True, **_common)
settings.register_profile("dev", max_examples=50, **_common)
settings.register_profile("thorough", max_examples=500, **_common)

PROFILE = os.environ.get("ARCHSPEC_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


@pytest.fixture(scope="package", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
