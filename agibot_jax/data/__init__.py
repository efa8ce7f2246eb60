"""3-view Agibot training data: layout validation, decoding, resize, controls and the grain pipeline.

  layout.py         dataset scan + up-front validation (every problem, each naming its file), captions
  video.py          probe / decode (imageio-ffmpeg or OpenCV) / write mp4
  resize.py         torchvision-equivalent antialiased resize in NumPy
  controls.py       edge (Canny) and vis (blur chain) control maps
  pipeline.py       RandomAccessDataSource, grain dataset/iterator, batch collation
  text_provider.py  caption strings -> text embeddings interface
  inspect.py        `python -m agibot_jax.data.inspect`: validate a dataset, preview a sample
  make_example.py   `python -m agibot_jax.data.make_example DIR`: synthetic 3-view dataset
"""
