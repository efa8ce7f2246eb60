"""Agibot 3-view post-training with `vis` control (reference: transfer2_agibot_posttrain_vis_example).

  python -m agibot_jax.train --config configs/vis.py --workdir runs/vis \
      --config.dataloader_train.dataset.dataset_dir=DIR
  python -m agibot_jax.train --config configs/vis.py:tiny --workdir runs/demo   # CPU-sized
"""

from configs import base


def get_config(arg: str = ""):
  return base.get_config("vis", arg)
