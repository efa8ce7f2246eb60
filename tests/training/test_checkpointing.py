"""agibot_jax/training/checkpointing.py, what the read-only commands use: the weights and the config of a run's
newest checkpoint (resume, corruption and the config comparison: test_reliability.py)."""

import jax
import numpy as np

from agibot_jax.training import checkpointing
from configs import edge
from tests.training.test_reliability import write_checkpoints


def test_weights_are_read_without_orbax_warnings(tmp_path, caplog):
  """Issue 31, item 4: reading a healthy checkpoint's weights prints nothing that reads as a problem (Orbax warned
  `Metadata file does not exist: .../state/_CHECKPOINT_METADATA` on every sample and eval)."""
  write_checkpoints(str(tmp_path), edge.get_config("tiny"))
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  caplog.set_level("INFO")
  step, params = checkpointing.restore_weights(str(tmp_path), {"w": one, "b": one}, use_ema=False)
  assert step == 2 and np.all(np.asarray(params["w"]) == 2.0)
  assert not [r for r in caplog.records if r.levelname == "WARNING"], [r.getMessage() for r in caplog.records]


def test_saved_config_is_the_newest_checkpoints(tmp_path):
  assert checkpointing.saved_config(str(tmp_path)) is None
  config = edge.get_config("tiny")
  write_checkpoints(str(tmp_path), config)
  step, saved = checkpointing.saved_config(str(tmp_path))
  assert step == 2 and saved["model"]["net"]["num_blocks"] == config.model.net.num_blocks
