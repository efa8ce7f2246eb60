"""Agibot 3-view post-training with `depth` control (reference: transfer2_agibot_posttrain_depth_example).

  python -m agibot_jax.train --config configs/depth.py --workdir runs/depth \
      --config.dataloader_train.dataset.dataset_dir=DIR
  python -m agibot_jax.train --config configs/depth.py:tiny --workdir runs/demo   # CPU-sized
"""

from configs import base


def get_config(arg: str = ""):
  return base.get_config("depth", arg)
