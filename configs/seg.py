"""Agibot 3-view post-training with `seg` control (reference: transfer2_agibot_posttrain_seg_example).

  python -m agibot_jax.train --config configs/seg.py --workdir runs/seg \
      --config.dataloader_train.dataset.dataset_dir=DIR
  python -m agibot_jax.train --config configs/seg.py:tiny --workdir runs/demo   # CPU-sized
"""

from configs import base


def get_config(arg: str = ""):
  return base.get_config("seg", arg)
