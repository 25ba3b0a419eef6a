"""The latent-walk rule (service/contract.py, v1): interpolation and truncation, as properties.

Exactness first: endpoints are the two latents bit for bit, psi = 1 changes nothing. Then the
geometry: slerp between unit vectors stays on the unit sphere and walks the great circle at
an even pace, lerp walks the chord, and both read the same backwards.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.contract import ContractError, interpolate, seed_to_latent, truncate

SEEDS = st.integers(0, 2**64 - 1)
FRAMES = st.integers(2, 40)
METHODS = st.sampled_from(["slerp", "lerp"])


@settings(max_examples=200, deadline=None)
@given(a=SEEDS, b=SEEDS, frames=FRAMES, method=METHODS)
def test_endpoints_are_the_two_latents_bit_for_bit(a, b, frames, method):
    za, zb = seed_to_latent(a, 100), seed_to_latent(b, 100)
    path = interpolate(za, zb, frames, method)
    assert path.dtype == np.float32 and path.shape == (frames, 100)
    assert path[0].tobytes() == za.tobytes() and path[-1].tobytes() == zb.tobytes()


@settings(max_examples=200, deadline=None)
@given(a=SEEDS, b=SEEDS, frames=st.integers(3, 40))
def test_slerp_between_unit_vectors_stays_on_the_sphere_at_an_even_pace(a, b, frames):
    za, zb = seed_to_latent(a, 100), seed_to_latent(b, 100)
    ua, ub = za / np.linalg.norm(za), zb / np.linalg.norm(zb)
    path = interpolate(ua, ub, frames).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, atol=1e-5)
    # Monotone: each frame is further (in angle) from a and closer to b than the one before;
    # even: the steps are equal angles.
    from_a = np.arccos(np.clip(path @ ua, -1, 1))
    to_b = np.arccos(np.clip(path @ ub, -1, 1))
    assert np.all(np.diff(from_a) > -1e-5) and np.all(np.diff(to_b) < 1e-5)
    steps = np.arccos(np.clip(np.sum(path[1:] * path[:-1], axis=1), -1, 1))
    np.testing.assert_allclose(steps, steps.mean(), atol=2e-3)


@settings(max_examples=200, deadline=None)
@given(a=SEEDS, b=SEEDS, frames=FRAMES, method=METHODS)
def test_the_path_reads_the_same_backwards(a, b, frames, method):
    za, zb = seed_to_latent(a, 64), seed_to_latent(b, 64)
    forward, backward = interpolate(za, zb, frames, method), interpolate(zb, za, frames, method)
    np.testing.assert_allclose(forward, backward[::-1], atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(a=SEEDS, b=SEEDS, frames=FRAMES)
def test_lerp_walks_the_chord_in_equal_steps(a, b, frames):
    za, zb = seed_to_latent(a, 32), seed_to_latent(b, 32)
    path = interpolate(za, zb, frames, "lerp").astype(np.float64)
    step = (zb.astype(np.float64) - za) / (frames - 1)
    np.testing.assert_allclose(np.diff(path, axis=0), np.broadcast_to(step, (frames - 1, 32)),
                               atol=1e-5)


def test_identical_and_opposite_endpoints_are_handled():
    z = seed_to_latent(3, 16)
    same = interpolate(z, z, 5)
    assert all(row.tobytes() == z.tobytes() for row in same)  # no 0/0
    opposite = interpolate(z, -z, 5, "lerp")
    np.testing.assert_allclose(opposite[2], 0.0, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(seed=SEEDS, psi=st.floats(0.01, 1.0))
def test_truncation_scales_toward_the_mean_and_psi_one_is_untouched(seed, psi):
    z = seed_to_latent(seed, 100)
    assert truncate(z, 1.0) is z
    np.testing.assert_allclose(truncate(z, psi), z.astype(np.float64) * psi, rtol=1e-6)


@pytest.mark.parametrize("psi", [0.0, -0.5, 1.5, float("nan"), float("inf")])
def test_a_psi_outside_zero_to_one_says_what_it_means(psi):
    with pytest.raises(ContractError, match=r"psi .* is outside \(0, 1\]"):
        truncate(seed_to_latent(1, 8), psi)


def test_bad_interpolation_arguments_say_what_to_send():
    z = seed_to_latent(1, 8)
    with pytest.raises(ContractError, match="slerp or lerp"):
        interpolate(z, z, 4, "cubic")
    with pytest.raises(ContractError, match="at least 2"):
        interpolate(z, z, 1)
