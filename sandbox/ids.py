"""Id ranges of the synthetic organization and the hash that seeds its random streams.

Generated records take ids from disjoint ranges whose offsets encode the owning patient's
index (``APPT_BASE + index * APPT_STRIDE + k``), so a record can be traced to its patient
without an index. Records created later count up from ``CREATED_BASE``.
"""

from __future__ import annotations

PATIENT_BASE = 1_000_000
APPT_BASE = 50_000_000
APPT_STRIDE = 16  # slots per patient; the last one is the patient's group appointment
POLICY_BASE = 20_000_000
BILLING_BASE = 30_000_000
APPLIED_TAG_BASE = 40_000_000
ADDRESS_BASE = 60_000_000
RECURRING_BASE = 65_000_000
CREATED_BASE = 90_000_000

_MASK = (1 << 64) - 1


def mix(*values: int) -> int:
    """Hash integers into a 64-bit seed (splitmix64 steps): stable across runs and platforms.

    Python's ``hash`` is salted per process, so it cannot seed reproducible streams.
    """
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state + (value & _MASK) + 0x9E3779B97F4A7C15) & _MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        state = z ^ (z >> 31)
    return state
