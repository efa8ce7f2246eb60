"""AgiBot World (raw release and LeRobot conversions), and any robot's LeRobot dataset, -> the training layout; the
commands are `python -m agibot_jax.data.import_agibot_world` (README "Data from AgiBot World") and
`python -m agibot_jax.data.import_lerobot` (README "Your own robot").

  source.py    what a format yields: episodes, their files (whole files or tar members), skip records
  raw.py       the raw release: task_info JSON, per-episode videos and head depth PNGs, tar shards
  lerobot.py   LeRobot v2.0/v2.1 (a file per episode) and v3.0 (packed files, from/to timestamps); camera maps
  decode.py    container probing and streaming decode (AV1 through imageio-ffmpeg's libdav1d)
  clips.py     where clips are cut (frame grid, --fps subsampling) and the 16:9 fit (stretch/pad/crop)
  captions.py  the per-clip caption template
  depth.py     millimetre depth PNGs -> the 8-bit depth control video
  importer.py  plan, cut, write atomically, resume, manifest
"""
