"""benchmarks/profile_breakdown.py: GPU kernel time by kind from a perfetto trace."""

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import profile_breakdown  # noqa: E402


def test_categories_of_real_kernel_names():
  cat = profile_breakdown.categorise
  assert cat("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x") == "attention_fwd"
  assert cat("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x128_1x") == "attention_bwd"
  assert cat("nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT") == "matmul"
  assert cat("gemm_fusion_dot_220") == "matmul"
  assert cat("MemcpyD2H") == "copy"
  assert cat("loop_multiply_fusion_26") == "other"


def test_breakdown_sums_device_events_per_step(tmp_path):
  events = [
      {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
      {"ph": "X", "pid": 1, "name": "sdpa_flash_fprop_x", "dur": 3_000_000},
      {"ph": "X", "pid": 1, "name": "nvjet_gemm", "dur": 1_000_000},
      {"ph": "X", "pid": 1, "name": "loop_add_fusion", "dur": 2_000_000},
      {"ph": "X", "pid": 2, "name": "sdpa_flash_fprop_x", "dur": 9_000_000},  # host event: ignored
  ]
  trace_dir = tmp_path / "plugins" / "profile" / "run"
  trace_dir.mkdir(parents=True)
  with gzip.open(trace_dir / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  out = profile_breakdown.breakdown(profile_breakdown.load_trace(str(tmp_path)), steps=2)
  assert out["device_processes"] == ["/device:GPU:0"]
  assert out["seconds_per_step"] == {"attention_fwd": 1.5, "matmul": 0.5, "other": 1.0}
  assert out["kernels_per_step"]["attention_fwd"] == 0.5
  assert out["total_s_per_step"] == 3.0
  assert out["top_glue"] == [dict(kernel="loop_add_fusion", hlo_op="", s_per_step=1.0, calls_per_step=0.5)]
