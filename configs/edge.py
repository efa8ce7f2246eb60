"""Agibot 3-view post-training with `edge` control (reference: transfer2_agibot_posttrain_edge_example).

  python -m agibot_jax.train --config configs/edge.py --workdir runs/edge \
      --config.dataloader_train.dataset.dataset_dir=DIR
  python -m agibot_jax.train --config configs/edge.py:tiny --workdir runs/demo   # CPU-sized
"""

from configs import base


def get_config(arg: str = ""):
  return base.get_config("edge", arg)
