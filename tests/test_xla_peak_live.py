"""benchmarks/xla_peak_live.py: the buffers live at the peak of an XLA program's device temp allocation."""

import json
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import xla_peak_live  # noqa: E402

STEM = "module_0007.jit_train_step.sm_9.0a_gpu_after_optimizations"

# Flattened schedule: p0 0, early.1 1, copy.1 2, c0 3, tuple.0 4, [condition: arg_tuple.2 5, lt.1 6],
# [body: arg_tuple.1 7, add.1 8, big.1 9, dot.1 10, reduce.1 11, tuple.1 12], while.1 13, final.1 14.
HLO = textwrap.dedent("""\
    HloModule jit_train_step, is_scheduled=true, entry_computation_layout={(f32[512]{0})->f32[512]{0}}

    %region_1.cond (arg_tuple.2: (s32[], f32[1024])) -> pred[] {
      %arg_tuple.2 = (s32[], f32[1024]{0}) parameter(0), metadata={scheduling_name="arg_tuple.2"}
      ROOT %lt.1 = pred[] compare(%arg_tuple.2#0, %arg_tuple.2#0), direction=LT, metadata={op_name="jit(train_step)/while/cond/lt" scheduling_name="lt.1"}
    }

    %region_0.body (arg_tuple.1: (s32[], f32[1024])) -> (s32[], f32[1024]) {
      %arg_tuple.1 = (s32[], f32[1024]{0}) parameter(0), metadata={scheduling_name="arg_tuple.1"}
      %add.1 = s32[] add(%arg_tuple.1#0, %arg_tuple.1#0), metadata={op_name="jit(train_step)/while/body/add" scheduling_name="add.1"}
      %big.1 = f32[2048]{0} fusion(%arg_tuple.1#1), kind=kLoop, calls=%fused_broadcast, metadata={op_name="jit(train_step)/while/body/mlp/broadcast_in_dim" scheduling_name="big.1"}
      %dot.1 = f32[1536]{0} custom-call(%big.1), custom_call_target="__cublas$gemm", metadata={op_name="jit(train_step)/while/body/mlp/dot_general" scheduling_name="dot.1"}
      %reduce.1 = f32[1024]{0} fusion(%big.1, %dot.1, %arg_tuple.1#1), kind=kLoop, calls=%fused_reduce, metadata={op_name="jit(train_step)/while/body/mlp/reduce_sum" scheduling_name="reduce.1"}
      ROOT %tuple.1 = (s32[], f32[1024]{0}) tuple(%add.1, %reduce.1), metadata={scheduling_name="tuple.1"}
    }

    ENTRY %main.9 (p0: f32[512]) -> f32[512] {
      %p0 = f32[512]{0} parameter(0), metadata={scheduling_name="p0"}
      %early.1 = f32[512]{0} fusion(%p0), kind=kLoop, calls=%fused_early, metadata={op_name="jit(train_step)/embed/mul" scheduling_name="early.1"}
      %copy.1 = f32[1024]{0} fusion(%p0), kind=kLoop, calls=%fused_copy, metadata={op_name="jit(train_step)/embed/concatenate" scheduling_name="copy.1"}
      %c0 = s32[] constant(0), metadata={scheduling_name="c0"}
      %tuple.0 = (s32[], f32[1024]{0}) tuple(%c0, %copy.1), metadata={scheduling_name="tuple.0"}
      %while.1 = (s32[], f32[1024]{0}) while(%tuple.0), condition=%region_1.cond, body=%region_0.body, metadata={op_name="jit(train_step)/while" scheduling_name="while.1"}, backend_config={"known_trip_count":{"n":"4"}}
      ROOT %final.1 = f32[512]{0} fusion(%early.1, %while.1#1), kind=kLoop, calls=%fused_final, metadata={op_name="jit(train_step)/head/add" scheduling_name="final.1"}
    }
    """)

# Allocation 1 is host memory (color 5) and larger: ignored. In allocation 2 the loop-carried value (phi) shares offset
# 2048 with copy.1 before the loop and reduce.1 after it.
ASSIGNMENT = textwrap.dedent("""\
    BufferAssignment:
    allocation 0: size 2048, page 0, parameter 0, shape |f32[512]| at ShapeIndex {}:
     value: <0 p0 @0> (size=2048,offset=0): f32[512]{0}
    allocation 1: size 1073741824, color 5, page 0, preallocated-temp:
     value: <30 copy-start.1{1} @5> (size=1073741824,offset=0): f32[268435456]{0:S(5)}
    allocation 2: size 25600, page 0, preallocated-temp:
     value: <10 early.1 @0> (size=2048,offset=0): f32[512]{0}
     value: <11 copy.1 @0> (size=4096,offset=2048): f32[1024]{0}
     value: <12 arg_tuple.1{1} (phi) @0> (size=4096,offset=2048): f32[1024]{0}
     value: <13 big.1 @0> (size=8192,offset=6144): f32[2048]{0}
     value: <14 dot.1 @0> (size=6144,offset=14336): f32[1536]{0}
     value: <15 reduce.1 @0> (size=4096,offset=2048): f32[1024]{0}
     value: <16 final.1 @0> (size=2048,offset=2048): f32[512]{0}

    Total bytes used: 1073772544 (1.00GiB)
    """)


def value(value_id, name, positions, uses, instruction):
  lines = [f"<{value_id} {name} @0>", " positions:", *(f"  {p}" for p in positions), " uses:"]
  lines += [f"  {u}" for u in uses] or ["  (none)"]
  return "\n".join(lines + [f" from instruction: {instruction}"])


VALUES = "\nTotal bytes used: 1073772544 (1.00GiB)\n\nUsed values:\n" + "\n".join([
    value(10, "early.1", ["early.1"], ["final.1, operand 0"],
          '%early.1 = f32[512]{0} fusion(%p0), kind=kLoop, metadata={op_name="jit(train_step)/embed/mul"}'),
    value(11, "copy.1", ["copy.1", "tuple.0 {1}"], ["tuple.0, operand 1", "while.1, operand 0 {1}"],
          '%copy.1 = f32[1024]{0} fusion(%p0), kind=kLoop, metadata={op_name="jit(train_step)/embed/concatenate"}'),
    value(12, "arg_tuple.1{1} (phi)", ["arg_tuple.1 {1}", "get-tuple-element.5"],  # printed inline in the HLO
          ["get-tuple-element.5, operand 0 {1}", "big.1, operand 0", "reduce.1, operand 2"],
          '%arg_tuple.1 = (s32[], f32[1024]{0}) parameter(0), metadata={scheduling_name="arg_tuple.1"}'),
    value(13, "big.1", ["big.1"], ["dot.1, operand 0", "reduce.1, operand 0"],
          '%big.1 = f32[2048]{0} fusion(%arg_tuple.1#1), metadata={op_name="jit(train_step)/while/body/mlp/broadcast_in_dim"}'),
    value(14, "dot.1", ["dot.1"], ["reduce.1, operand 1"],
          '%dot.1 = f32[1536]{0} custom-call(%big.1), metadata={op_name="jit(train_step)/while/body/mlp/dot_general"}'),
    value(15, "reduce.1", ["reduce.1", "tuple.1 {1}"], ["tuple.1, operand 1"],
          '%reduce.1 = f32[1024]{0} fusion(%big.1), metadata={op_name="jit(train_step)/while/body/mlp/reduce_sum"}'),
    value(16, "final.1", ["final.1"], [],
          '%final.1 = f32[512]{0} fusion(%early.1), metadata={op_name="jit(train_step)/head/add"}'),
    value(30, "copy-start.1{1}", ["copy-start.1 {1}"], [], '%copy-start.1 = f32[268435456]{0} copy-start(%p0)'),
]) + "\n"


def write_dump(directory, files=("", "-buffer-assignment", "-buffer-assignment-values")):
  texts = {"": HLO, "-buffer-assignment": ASSIGNMENT, "-buffer-assignment-values": VALUES}
  for suffix in files:
    (directory / f"{STEM}{suffix}.txt").write_text(texts[suffix])


def test_live_ranges_follow_loop_rules():
  hlo = xla_peak_live.parse_hlo(HLO)
  schedule = xla_peak_live.flatten_schedule(hlo)
  assert schedule.order[5:8] == ["arg_tuple.2", "lt.1", "arg_tuple.1"] and len(schedule.order) == 15
  assert schedule.loops == {"while.1": (5, 13)}
  _, slots = xla_peak_live.parse_allocation(ASSIGNMENT, 2)
  ranges = xla_peak_live.live_ranges(slots, xla_peak_live.parse_values(VALUES), hlo, schedule)
  # copy.1 dies when the body starts; reduce.1 is the body's root: live to the body's end.
  assert ranges == {10: (1, 14), 11: (2, 7), 12: (7, 11), 13: (9, 11), 14: (10, 11), 15: (11, 12), 16: (14, 14)}
  # Step 11 holds 24576 B if the phi and reduce.1 (one buffer at offset 2048) were both counted: the peak is step 10.
  assert xla_peak_live.peak(ranges, slots, len(schedule.order)) == (10, 20480)


def test_peak_of_device_temp_allocation(tmp_path, capsys):
  write_dump(tmp_path)
  xla_peak_live.main([str(tmp_path), "--top", "3"])
  out = capsys.readouterr().out.splitlines()
  summary = json.loads(out[-1])
  assert summary["allocation"] == 2  # not the larger host allocation (color 5)
  assert (summary["peak_bytes"], summary["peak_fraction"]) == (20480, 0.8)
  assert (summary["peak_instruction"], summary["peak_op_name"]) == ("dot.1", "jit(train_step)/while/body/mlp/dot_general")
  assert summary["peak_loops"] == [dict(instruction="while.1", op_name="jit(train_step)/while")]
  assert [(row["shape"], row["bytes"], row["count"]) for row in summary["by_shape"]] == [
      ("f32[2048]", 8192, 1), ("f32[1536]", 6144, 1), ("f32[1024]", 4096, 1)]
  # The phi is named after reduce.1, the value of its buffer that starts closest to it.
  assert [(row["op"], row["bytes"], row["count"]) for row in summary["by_op"]] == [
      ("jit(train_step)/while/body/mlp", 18432, 3), ("jit(train_step)/embed", 2048, 1)]
  assert "  instruction: dot.1 (custom-call in region_0.body)" in out


def test_missing_file_exits_2_naming_it(tmp_path, capsys):
  write_dump(tmp_path, files=("", "-buffer-assignment"))
  with pytest.raises(SystemExit) as exit_info:
    xla_peak_live.main([str(tmp_path)])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == f"xla_peak_live: missing {tmp_path / STEM}-buffer-assignment-values.txt\n"
