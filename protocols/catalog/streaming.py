"""``streaming`` (a follow-up): streams of digits back to back in one trial, no reset between them."""

from __future__ import annotations

from ..conditions import REFERENCE_DAMPING, loop
from ..record import ProtocolDefaults, ProtocolDefinition

STREAM_DIGITS = 4
"""Digits per stream (800 ms trials of 200 ms digits)."""

CONDITIONS = (
    loop(
        "stream_frozen",
        f"streams of {STREAM_DIGITS} digits, no reset between them; canonical loop, frozen",
        "canonical",
        False,
        stream_digits=STREAM_DIGITS,
    ),
    loop(
        "stream_trainable",
        f"streams of {STREAM_DIGITS} digits, no reset between them; canonical loop, trainable",
        "canonical",
        True,
        stream_digits=STREAM_DIGITS,
    ),
    # BPTT through 8000 steps explodes more often than through 2000 (one of three exact
    # trainable streams diverged): is that what stops it, and does bounding it change the loop?
    loop(
        "stream_trainable_damped",
        f"streams of {STREAM_DIGITS} digits, no reset between them; canonical loop, trainable; "
        f"membrane gradient x {REFERENCE_DAMPING:g} per step",
        "canonical",
        True,
        stream_digits=STREAM_DIGITS,
        membrane_grad_scale=REFERENCE_DAMPING,
    ),
)

PROTOCOL = ProtocolDefinition(
    name="streaming",
    question=(
        f"Does the loop survive, and does it help, when the network must follow a continuous input? Streams "
        f"of {STREAM_DIGITS} digits back to back in one trial, no reset between them, one readout window per "
        "digit (biosim.streams); the loop frozen and trainable, the trainable one with exact BPTT and with the "
        "reference's membrane-gradient damping."
    ),
    conditions=CONDITIONS,
    # The study tier's digits, seeds and Adam steps, so each run pairs with a dale_pruning run
    # (frozen_ping, trainable_ping_init) that differs only by the resets between digits.
    defaults=ProtocolDefaults("study"),
    order=6,
)
