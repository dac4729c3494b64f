"""Test-session setup: one torch thread per pytest worker (CI runs two workers on two cores)."""

from __future__ import annotations

import os

import torch

# Tiny models gain nothing from intra-op threads, and two workers with two threads each oversubscribe the
# machine; fixing one thread also keeps reductions in a deterministic order.
torch.set_num_threads(1)
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
