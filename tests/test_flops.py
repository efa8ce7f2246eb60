"""The analytic FLOP count (MFU numerator) against the spec's formula and torch's FlopCounterMode."""

import pytest

from agibot_jax import flops
from agibot_jax.models import dit_config


def test_matches_torch_flop_counter_on_the_reference_module():
  # spec/network.md §10: torch FlopCounterMode on the real module at V=3, T=2, 16×16 latent.
  count = flops.dit_flops(dit_config.DiTConfig(state_t=2), num_views=3, latent_hw=(16, 16))
  assert count.forward == 2_883_989_798_912


@pytest.mark.parametrize("hw,fwd,step", [((54, 96), 1.34e15, 3.52e15), ((90, 160), 7.80e15, 2.17e16)])
def test_spec_table_at_full_size(hw, fwd, step):
  count = flops.dit_flops(dit_config.DiTConfig(), num_views=3, latent_hw=hw)
  assert count.forward == pytest.approx(fwd, rel=5e-3)
  assert count.train_step == pytest.approx(step, rel=5e-3)
