"""Shared post-training config of the Agibot 3-view control models (other robots: `rig`).

Values are the reference's `transfer2_agibot_posttrain_<ct>_example` settings after all
merges (shared/spec/training.md §10). The tree mirrors the reference's override keys, so a
reference command ports key by key, e.g.

  python -m agibot_jax.train --config configs/seg.py --workdir runs/seg \
      --config.dataloader_train.dataset.dataset_dir=DIR \
      --config.trainer.max_iter=10000 --config.optimizer.lr=1e-4

`get_config(control_type, arg)` returns the full-size setting for `arg=""`/`"2b"` and a
CPU-sized variant of the same architecture for `arg="tiny"` (`configs/seg.py:tiny`).
"""

from __future__ import annotations

import ml_collections

from agibot_jax import registry, rig


def dit_2b() -> ml_collections.ConfigDict:
  """`cosmos_v1_2B_multiview_crossview_control` with the Agibot overrides (spec/network.md §1)."""
  net = ml_collections.ConfigDict()
  net.model_channels = 2048
  net.num_blocks = 28
  net.num_heads = 16
  net.mlp_ratio = 4.0
  net.in_channels = 16
  net.out_channels = 16
  net.patch_spatial = 2
  net.patch_temporal = 1
  net.concat_padding_mask = True
  net.adaln_lora_dim = 256
  net.crossattn_proj_in_channels = 100352
  net.crossattn_emb_channels = 1024
  net.text_tokens_per_view = 512
  # View-embedding rows (a rig's cameras use rows 0..2); the cross-view neighbours come from config.rig
  # (agibot_jax.assemble.dit_config).
  net.n_cameras_emb = rig.VIEW_ROWS
  net.state_t = 24
  net.max_img_h = 240
  net.max_img_w = 240
  net.max_frames = 128
  net.rope_h_extrapolation_ratio = 3.0
  net.rope_w_extrapolation_ratio = 3.0
  net.rope_t_extrapolation_ratio = 1.0
  net.timestep_scale = 0.001
  net.vace_block_every_n = 7
  net.num_max_modalities = 1
  # Numerics / kernels (not in the reference's net config).
  net.param_dtype = "float32"
  net.dtype = "bfloat16"
  net.attention = "auto"  # xla | cudnn | auto
  # What each block keeps for its backward (agibot_jax/models/remat.py): none | full | save_self_attention |
  # save_self_and_cross_view_attention | save_attention (README: memory and speed of each).
  net.remat_policy = "save_self_attention"
  net.offload_block_inputs = False  # block inputs to host memory (720p on one 80 GB GPU)
  net.remat_sublayers = False  # a checkpoint per sub-layer inside each block's: one sub-layer's activations at a time
  net.mlp_chunks = 1  # each block's MLP over this many token slices, one at a time (smaller peak; the first MLP matmul runs once more)
  net.cross_view_chunks = 1  # each block's cross-view attention over this many frame slices, one at a time (smaller peak; its forward runs once more)
  net.remat_segment_blocks = 1  # >1: the main blocks' scan keeps each k-th block input on the device (+1 forward)
  # Context parallelism: cross-view and text attention per device on its tokens, no reshard (2 H100s: 93% vs 86%).
  net.context_local_attention = True
  return net


def tiny_net(net: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Same architecture, CPU-sized (the golden `dit_tiny` sizes, 3 latent frames)."""
  net.model_channels = 128
  net.num_heads = 4
  net.num_blocks = 4
  net.vace_block_every_n = 2
  net.adaln_lora_dim = 32
  net.crossattn_proj_in_channels = 96
  net.crossattn_emb_channels = 64
  net.state_t = 3
  net.param_dtype = "float32"
  net.dtype = "float32"
  net.attention = "xla"
  net.remat_policy = "none"
  return net


def get_config(control_type: str, arg: str = "") -> ml_collections.ConfigDict:
  registry.control(control_type)  # rejects an unknown control type, naming the known ones
  arg = (arg or "").strip()
  if arg not in ("", "2b", "tiny"):
    raise ValueError(f"config argument must be '', '2b' or 'tiny', got {arg!r}")

  config = ml_collections.ConfigDict()
  config.control_type = control_type
  config.seed = 0
  # The cameras (agibot_jax/rig.py): a preset name, a rig JSON file (e.g. the DST/rig.json of
  # python -m agibot_jax.data.import_lerobot), or a list of cameras. Any value type, so a config file may assign a list.
  config.rig = ml_collections.FieldReference(rig.DEFAULT, field_type=object)

  config.job = ml_collections.ConfigDict()
  config.job.project = "cosmos_transfer_v2p5"
  config.job.group = "agibot_posttrain"
  config.job.name = f"transfer2_agibot_posttrain_{control_type}_example"
  # A full-size model on a machine without a GPU is refused (hours per step) unless this is set.
  config.job.allow_cpu = False

  # --- data -------------------------------------------------------------------------
  config.dataloader_train = ml_collections.ConfigDict()
  config.dataloader_train.batch_size = 1
  config.dataloader_train.num_workers = 4
  config.dataloader_train.prefetch_buffer_size = 2
  config.dataloader_train.shuffle = True
  ds = config.dataloader_train.dataset = ml_collections.ConfigDict()
  ds.dataset_dir = ""
  ds.control_input_type = control_type
  ds.views = ()  # some of the rig's cameras, in this order; empty: all of them
  ds.resolution_hw = (432, 768)
  ds.num_video_frames = 93
  ds.random_start_frame = False
  ds.skip_invalid = False
  ds.video_backend = "auto"  # auto | imageio | opencv
  ds.text_cache_dir = ""
  ds.latent_cache_dir = ""

  # --- validation (agibot_jax/evaluation/validation.py) ----------------------------------------
  # Held-out clips: a dataset in the training layout, or else a fraction of the training samples (chosen by
  # held_out_seed), which the training loader then skips whenever it is set (so agibot_jax.eval can score them
  # later, even when validation_iter is 0). Every `trainer.validation_iter` steps and in
  # `agibot_jax.eval`, each held-out sample is scored at one noise level per timestep bucket with noise, timesteps
  # and conditional frames fixed per sample, so checkpoints are compared on identical inputs.
  val = config.dataloader_val = ml_collections.ConfigDict()
  val.dataset_dir = ""
  val.held_out_fraction = 0.0
  val.held_out_seed = 0
  val.max_samples = 8  # the first held-out samples by id
  val.num_timestep_buckets = 4  # sigma in [0, 1/K), ..., [(K-1)/K, 1): one draw per sample and bucket
  val.seed = 0  # key of the fixed draws
  val.control_preset = "medium"  # edge/vis controls at this inference preset (not a random training draw)
  val.weights = ("reg", "ema")  # which weights to validate during training (val/ and val_ema/)

  # --- model ------------------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.net = dit_2b()
  config.model.train_base = False
  # Random weights for models whose checkpoint is not given; only the CPU demo allows it.
  config.model.allow_random_init = False
  config.model.precision = "bfloat16"
  config.model.shift = 5.0
  config.model.conditional_frames_probs = (0.5, 0.5, 0.0)  # P(n conditional latent frames per view)
  config.model.text_dropout = 0.2
  config.model.use_video_condition_dropout = 0.2
  config.model.hint_keys = control_type
  # Scale of the control branch's hints in the network (the reference's control weight; 0 ignores the control).
  config.model.control_weight = 1.0
  # Memory (README "Memory and speed settings"): Adam moments and EMA in pinned host memory between steps; and the
  # device memory pool a step may use, GiB: > 0 picks the fastest plan that fits (agibot_jax/memory_plans.py, e.g.
  # 22 for a 24 GB card), 0 runs the settings as written.
  config.model.offload_optimizer_state = False
  config.model.memory_budget_gib = 0.0
  # LoRA on the control blocks (agibot_jax/models/lora.py; README "Memory and speed settings"): rank > 0 freezes the
  # targeted kernels W and trains W + (alpha/rank)·A@B instead (B starts at 0: step 0 is the base). This changes the
  # training, not only its memory. 0: the whole control branch trains (the reference's post-training).
  lora = config.model.lora = ml_collections.ConfigDict()
  lora.rank = 0
  lora.alpha = 16.0
  # Kernels of a control block to adapt, as fnmatch patterns on their path inside the block ("self_attn/q_proj",
  # "mlp_layer1", "adaln_modulation_mlp/lora_down", ...); "*": every kernel. Other block parameters stay frozen.
  lora.targets = ("*",)
  # Control-branch groups still trained in full: the control input's patch embedding and the projection into the
  # branch (4.3M parameters of the 2B's 365M, 69 MB of state) are the branch's entry for a new control signal, and
  # cost as much as rank-11 adapters. () freezes them too.
  lora.train_in_full = ("control_embedder", "control_before_proj")
  config.model.tokenizer = ml_collections.ConfigDict()
  config.model.tokenizer.dim = 96
  config.model.tokenizer.z_dim = 16
  config.model.tokenizer.temporal_window = 16
  config.model.tokenizer.dtype = "bfloat16"
  config.model.tokenizer.path = ""  # converted VAE (python -m convert.vae); or a load_path bundle's vae/
  config.model.text_encoder = ml_collections.ConfigDict()
  config.model.text_encoder.num_tokens = 512
  config.model.text_encoder.compute_online = True
  config.model.text_encoder.path = ""
  # Local Hugging Face tokenizer folder; "" = the folder the encoder was converted from.
  config.model.text_encoder.tokenizer = ""

  # --- optimisation -----------------------------------------------------------------
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.lr = 1e-4
  config.optimizer.weight_decay = 0.1
  config.optimizer.betas = (0.9, 0.99)
  config.optimizer.eps = 1e-8
  config.optimizer.clip_norm = 1.0

  config.scheduler = ml_collections.ConfigDict()
  config.scheduler.f_start = (1e-6,)
  config.scheduler.f_max = (0.99,)
  config.scheduler.f_min = (0.4,)
  config.scheduler.warm_up_steps = (500,)
  config.scheduler.cycle_lengths = (30000,)

  config.ema = ml_collections.ConfigDict()
  config.ema.enabled = True
  config.ema.rate = 0.10
  config.ema.iteration_shift = 0

  # --- loop, checkpoints, parallelism -------------------------------------------------
  config.trainer = ml_collections.ConfigDict()
  config.trainer.max_iter = 10_000
  config.trainer.logging_iter = 100
  config.trainer.grad_accum_iter = 1
  config.trainer.validation_iter = 0  # validation loss every N steps (0: never; dataloader_val says on what)
  config.trainer.callbacks = ml_collections.ConfigDict()
  config.trainer.callbacks.every_n_sample = ml_collections.ConfigDict()
  config.trainer.callbacks.every_n_sample.every_n = 200
  config.trainer.callbacks.every_n_sample.guidance = (0.0, 3.0, 5.0)
  config.trainer.callbacks.every_n_sample.num_cond_frames = (0, 1)
  config.trainer.callbacks.every_n_sample.control_weights = (1.0,)  # e.g. (0.0, 1.0) to see what the control adds
  config.trainer.callbacks.every_n_sample.num_sampling_step = 35
  config.trainer.callbacks.every_n_sample.fps = 10
  # Control adherence (and PSNR/SSIM of samples with clean frames) of every sample, to TensorBoard
  # (agibot_jax/evaluation/scoring.py; host CPU time on process 0).
  config.trainer.callbacks.every_n_sample.metrics = True

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.save_iter = 500
  config.checkpoint.load_path = ""
  config.checkpoint.keep = 3
  config.checkpoint.async_save = True

  config.mesh = ml_collections.ConfigDict()
  # Context parallelism over every device, as the reference's CP = world size: tokens split across devices,
  # heads inside attention (sharding.py). -1: all remaining devices.
  config.mesh.data = 1
  config.mesh.fsdp = 1
  config.mesh.context = -1

  # --- reliability (README: Reliability) ---------------------------------------------------
  # Dataset check before any model is built: "probe" reads each video's metadata and first frame; "full" also
  # decodes every frame the run will read (slow on a large dataset; `python -m agibot_jax.data.inspect --full`).
  ds.validate = "probe"
  # Samples that fail to decode during training are replaced by the next sample and counted; the run stops
  # when more than this many were skipped.
  ds.max_bad_samples = 100
  # A control video of another aspect ratio than its RGB video is refused (resized to resolution_hw, the two would
  # be stretched differently and no longer line up); True: the stretch is intended.
  ds.allow_control_stretch = False
  # Steps with a non-finite loss or gradient are skipped (no update); this many in a row stop the run.
  config.trainer.max_nonfinite_steps = 20
  # A newest checkpoint that does not restore stops the run (True) instead of being moved aside for the next
  # older one (False).
  config.checkpoint.strict_resume = False

  if arg == "tiny":
    tiny_net(config.model.net)
    config.model.precision = "float32"
    config.model.allow_random_init = True
    config.model.tokenizer.dtype = "float32"
    config.model.tokenizer.dim = 16
    config.model.text_encoder.num_tokens = 512
    ds.resolution_hw = (64, 96)
    ds.num_video_frames = 4 * (config.model.net.state_t - 1) + 1
    config.dataloader_train.num_workers = 0
    config.trainer.max_iter = 4
    config.trainer.logging_iter = 1
    config.trainer.callbacks.every_n_sample.every_n = 4
    config.trainer.callbacks.every_n_sample.num_sampling_step = 4
    config.checkpoint.save_iter = 2
    config.scheduler.warm_up_steps = (2,)
    config.scheduler.cycle_lengths = (100,)
  return config
