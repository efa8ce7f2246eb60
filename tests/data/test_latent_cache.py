"""agibot_jax/data/latent_cache.py, agibot_jax/cache_latents.py and the cached mode of pipeline.py.

The tiny configs (64x96, 9 frames, random tiny VAE) on a synthetic 2-sample dataset of 80x112 clips: the
train step's inputs from a float32 cache equal the online ones bit for bit (depth/seg), a vis cache holds
the epoch-0 draw, reruns encode nothing, and config mismatches / missing files fail naming the key / file.
"""

import copy
import os
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

from agibot_jax import array_cache, assemble, cache_latents, sharding
from agibot_jax.data import latent_cache, pipeline, synthetic
from tests.data.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDS = ("synthetic_000", "synthetic_001")
LATENT_KEYS = ("latent_video", "latent_control")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  out = tmp_path_factory.mktemp("latent_ds")
  synthetic.write_example(str(out), num_samples=2, frames=12, height=80, width=112)
  return out


@pytest.fixture(scope="module")
def vae(dataset):
  """The training job's VAE of the tiny configs (same for every control type) and one shared jitted encoder."""
  model, params = assemble.build_vae(tiny_config("depth", dataset))
  return model, params, assemble.make_encoder(model, 3)


@pytest.fixture(scope="module")
def caches(dataset, vae, tmp_path_factory):
  """control type -> a float32 cache of the dataset, written once per module (copy it to modify it)."""
  root, written = tmp_path_factory.mktemp("latent_caches"), {}
  model, params, encode = vae

  def get(control_type):
    if control_type not in written:
      cache_dir = str(root / control_type)
      assert cache_latents.write_cache(tiny_config(control_type, dataset), cache_dir, model, params,
                                       encode=encode) == (2, 2)
      written[control_type] = cache_dir
    return written[control_type]

  return get


class _TextStub:
  """Caption -> constant embedding of its length: enough to see both paths get the same captions."""
  num_tokens, dim, projected = 4, 8, False

  def embed(self, captions):
    return np.stack([np.full((self.num_tokens, self.dim), len(c), np.float32) for c in captions])


def _cached(config, cache_dir):
  config = copy.deepcopy(config)
  config.dataloader_train.dataset.latent_cache_dir = cache_dir
  return config


@pytest.mark.parametrize("control_type", ["depth", pytest.param("seg", marks=pytest.mark.slow)])  # ~25 s each
def test_cached_train_inputs_equal_online(dataset, vae, caches, control_type):
  model, params, encode = vae
  config = tiny_config(control_type, dataset)
  cached_config = _cached(config, caches(control_type))
  online = list(pipeline.from_config(config, num_epochs=1))
  cached = list(pipeline.from_config(cached_config, num_epochs=1, vae_params=params))
  assert [b["__key__"] for b in cached] == [b["__key__"] for b in online] and len(online) == 2

  mesh = sharding.make_mesh(**config.mesh)
  pixel_keys = {"video", f"control_input_{control_type}"}
  for on, ca in zip(online, cached):
    assert set(ca) == set(on) - pixel_keys | set(LATENT_KEYS)
    for key in set(on) - pixel_keys:
      if isinstance(on[key], np.ndarray):
        assert ca[key].dtype == on[key].dtype, key
        np.testing.assert_array_equal(ca[key], on[key], err_msg=key)
      else:
        assert ca[key] == on[key], key
    for key in LATENT_KEYS:
      assert ca[key].shape == (1, 9, 8, 12, 16) and ca[key].dtype == np.float32

    on_model = assemble.model_batch(on, encode, params, _TextStub(), config, mesh)
    ca_model = assemble.model_batch(ca, encode, params, _TextStub(), cached_config, mesh)
    assert set(on_model) == set(ca_model)
    for key in on_model:  # bit-exact, float32
      np.testing.assert_array_equal(np.asarray(ca_model[key]), np.asarray(on_model[key]), err_msg=key)
    x0, control = np.asarray(on_model["x0_BTHWC"]), np.asarray(on_model["control_BTHWC"])
    assert x0.std() > 0.05 and control.std() > 0.05 and not np.array_equal(x0, control)


@pytest.mark.slow  # ~12 s
def test_vis_cache_holds_the_epoch0_draw(dataset, vae, caches):
  # vis rather than edge: the synthetic shapes' edges are so sharp that every Canny draw gives the same map.
  model, params, encode = vae
  config = tiny_config("vis", dataset)
  cache = latent_cache.LatentCache(caches("vis"))
  assert cache.meta["frozen_draw"] == {"seed": 0, "epoch": 0, "control_preset": None}
  source = pipeline.AgibotMultiviewSource(pipeline.DataSettings.from_config(config))
  index = 1
  epoch0 = pipeline.collate([source.load(index, pipeline.sample_rng(config.seed, 0, index))])
  video, control = encode(params, epoch0["video"], epoch0["control_input_vis"])
  cached_video, cached_control, start = cache.read(IDS[index])
  np.testing.assert_array_equal(cached_video, np.asarray(video[0]))
  np.testing.assert_array_equal(cached_control, np.asarray(control[0]))
  assert start == 0
  # Online, epoch 1 draws another blur; the cache keeps serving the epoch-0 map.
  epoch1 = source.load(index, pipeline.sample_rng(config.seed, 1, index))
  assert not np.array_equal(epoch1["control_input_vis"], epoch0["control_input_vis"][0])


def test_rerun_encodes_nothing(dataset, vae, caches):
  model, params, _ = vae

  def must_not_encode(*args):
    raise AssertionError("a cached sample was encoded again")

  cache_dir = caches("depth")
  before = {i: os.path.getmtime(os.path.join(cache_dir, f"{i}.npz")) for i in IDS}
  assert cache_latents.write_cache(tiny_config("depth", dataset), cache_dir, model, params,
                                   encode=must_not_encode) == (2, 0)
  assert before == {i: os.path.getmtime(os.path.join(cache_dir, f"{i}.npz")) for i in IDS}
  # Adding to a cache written with other settings is refused.
  with pytest.raises(latent_cache.CacheMismatchError, match="dtype='float32'.*dtype='bfloat16'"):
    cache_latents.write_cache(tiny_config("depth", dataset), cache_dir, model, params, dtype="bfloat16",
                              encode=must_not_encode)


@pytest.mark.parametrize("override, key", [
    ({"control_input_type": "seg"}, "control_type"),
    ({"resolution_hw": (32, 48)}, "resolution_hw"),
    ({"num_video_frames": 5}, "num_video_frames"),
    ({"random_start_frame": True}, "random_start_frame"),
])
def test_config_mismatch_names_the_key(dataset, caches, override, key):
  config = _cached(tiny_config("depth", dataset, **override), caches("depth"))
  with pytest.raises(latent_cache.CacheMismatchError, match=rf"written with {key}=") as e:
    pipeline.from_config(config, num_epochs=1)
  assert e.value.key == key


def test_vae_mismatch_names_the_key(dataset, vae, caches):
  _, params, _ = vae
  config = _cached(tiny_config("depth", dataset), caches("depth"))
  other = jax.tree.map(lambda x: x * 1.01, params)
  with pytest.raises(latent_cache.CacheMismatchError, match="vae_fingerprint"):
    pipeline.from_config(config, num_epochs=1, vae_params=other)
  config.model.tokenizer.dim = 8
  with pytest.raises(latent_cache.CacheMismatchError, match=r"vae\.dim=16.*vae\.dim=8"):
    pipeline.from_config(config, num_epochs=1)


def test_missing_files_are_named(dataset, caches, tmp_path):
  cache_dir = tmp_path / "cache"
  shutil.copytree(caches("depth"), cache_dir)
  config = _cached(tiny_config("depth", dataset), str(cache_dir))
  source = pipeline.AgibotMultiviewSource(pipeline.DataSettings.from_config(config))
  os.remove(cache_dir / f"{IDS[1]}.npz")
  with pytest.raises(FileNotFoundError, match=str(cache_dir / f"{IDS[1]}.npz")):
    source[1]  # deleted while training
  with pytest.raises(FileNotFoundError, match=str(cache_dir / f"{IDS[1]}.npz")):
    pipeline.from_config(config, num_epochs=1)  # checked up front
  os.remove(cache_dir / array_cache.INDEX_FILE)
  with pytest.raises(FileNotFoundError, match=str(cache_dir / array_cache.INDEX_FILE)):
    pipeline.from_config(config, num_epochs=1)


def test_bfloat16_entries_round_trip(tmp_path):
  meta = {"format": latent_cache.CACHE_FORMAT, "latent_shape": [3, 2, 2, 4], "dtype": "bfloat16"}
  cache = latent_cache.LatentCache.create(str(tmp_path), meta)
  rng = np.random.default_rng(0)
  video, control = rng.normal(size=(2, 3, 2, 2, 4)).astype(np.float32)
  cache.write("s", video, control, start_frame=7)
  got_video, got_control, start = cache.read("s")
  assert got_video.dtype == np.float32 and start == 7
  np.testing.assert_array_equal(got_video, video.astype(ml_dtypes.bfloat16).astype(np.float32))
  np.testing.assert_array_equal(got_control, control.astype(ml_dtypes.bfloat16).astype(np.float32))
  assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
  with pytest.raises(ValueError, match="latent_video of sample 'bad' has shape"):
    cache.write("bad", video[:2], control, start_frame=0)


@pytest.mark.slow  # ~20 s; the default run checks the library path the command calls
def test_cli_writes_the_same_cache(dataset, caches, tmp_path):
  """The command of the README, as a subprocess: exit 0, prints the folder, same latents as in-process."""
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "agibot_jax.cache_latents", "--config", "configs/depth.py:tiny",
         "--workdir", str(workdir), f"--config.dataloader_train.dataset.dataset_dir={dataset}"]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  cache_dir = workdir / "latent_cache"
  assert f"2 samples, 2 encoded, 0 already cached -> {cache_dir}" in result.stderr
  reference = latent_cache.LatentCache(caches("depth"))
  written = latent_cache.LatentCache(str(cache_dir))
  assert written.meta == reference.meta  # same VAE weights (build_vae's seeded random init), same settings
  for sample_id in IDS:
    for got, want in zip(written.read(sample_id), reference.read(sample_id)):
      np.testing.assert_array_equal(got, want)
