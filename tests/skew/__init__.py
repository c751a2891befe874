"""Test-only schema modules for version-skew tests (``--schema tests.skew.v1_1``).

``v1_0`` declares a user event SKEW_ECHO; ``v1_1`` is the same contract one minor
later: SKEW_ECHO's payload and reply gain an appended field (``lanes``, since 1.1,
with a default) and two events appear (SKEW_NEW_CALL, sync; SKEW_NEW_NOTE, async).
``v2_0`` is the next major (no bind with 1.x).
"""
