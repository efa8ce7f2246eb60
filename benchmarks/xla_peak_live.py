"""Which buffers are live at the peak of a compiled XLA GPU program's device temp allocation.

  XLA_FLAGS="--xla_dump_to=DIR --xla_dump_hlo_module_re=jit_train_step --xla_dump_hlo_as_text" <run one step>
  python3 benchmarks/xla_peak_live.py DIR [--module jit_train_step] [--allocation N] [--top 25]

Reads the module's scheduled HLO (DIR/module_N.NAME.*after_optimizations.txt, the highest N if several), its buffer
assignment (...-buffer-assignment.txt: which values share an allocation, at which offset) and its values
(...-buffer-assignment-values.txt: each value's positions and uses). Lays the schedule out flat, gives every value of
the allocation a live range, sweeps the steps and prints the peak: its bytes and share of the allocation, the
instruction there with its op_name and the while loops around it, then the values live there grouped by shape and by
op_name path without its last primitive, largest first. The last line is the same as one JSON object.
The allocation is by default the largest `preallocated-temp` one without a `color` (device memory; color 5 is host).

Approximations of XLA's HloLiveRange:
  - while / conditional / call / async bodies are inlined where they are called, once; a conditional's branches
    one after the other;
  - a value lives from its first scheduled position to its last position or use; a use by a while ends at the start
    of its body (the body's parameter takes the buffer over); a position that is a parameter of a called computation
    starts it at that computation's first step, one that is its root ends it at the last;
  - get-tuple-element positions and uses are skipped: the dump prints them inline (%t#0), in their operand's buffer;
  - values live together at one offset are one buffer (aliases): counted once, at the largest size;
  - a loop-carried (phi) value takes the op_name of the value at the same offset and shape starting closest to it.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import os
import pathlib
import re
import sys

GIB = 1 << 30
CALLERS = ("while", "conditional", "call", "async-start")  # opcodes whose called computations run inside them

COMPUTATION = re.compile(r"^(ENTRY\s+)?%([^\s(]+)\s*\(")
INSTRUCTION = re.compile(r"^\s+(ROOT\s+)?%([^\s=]+)\s*=\s*(.*)$")
OPCODE = re.compile(r"\s([a-z][a-z0-9_-]*)\(")  # the first `word(` after the shape
CALLEE = re.compile(r"\b(condition|body|to_apply|calls|true_computation|false_computation)=%([^\s,]+)")
BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
OP_NAME = re.compile(r'op_name="([^"]*)"')
ALLOCATION = re.compile(r"^allocation (\d+): size (\d+), (.*):$", re.M)
SLOT = re.compile(r"^ value: <(\d+) (.+?) @\d+> \(size=(\d+),offset=(\d+)\): (.*)$")
VALUE = re.compile(r"^<(\d+) (.+?) @\d+>$")

Instruction = collections.namedtuple("Instruction", "computation opcode callees op_name is_root")
Hlo = collections.namedtuple("Hlo", "entry computations instructions")
Schedule = collections.namedtuple("Schedule", "order step spans loops")
Slot = collections.namedtuple("Slot", "name size offset shape")


@dataclasses.dataclass
class Value:
  name: str
  positions: list = dataclasses.field(default_factory=list)
  uses: list = dataclasses.field(default_factory=list)
  op_name: str = ""


def parse_hlo(text: str) -> Hlo:
  """Computations (instruction names in schedule order) and instructions of a scheduled HLO text."""
  entry, current, computations, instructions = None, None, {}, {}
  for line in text.splitlines():
    header = COMPUTATION.match(line)
    if header:
      current = header.group(2)
      computations[current] = []
      entry = current if header.group(1) else entry
    elif line.startswith("}"):
      current = None
    elif current is not None and (match := INSTRUCTION.match(line)):
      root, name, rest = match.groups()
      opcode = OPCODE.search(rest)
      callees = CALLEE.findall(rest)
      for branches in BRANCHES.findall(rest):
        callees += [("branch", branch.strip().lstrip("%")) for branch in branches.split(",")]
      op_name = OP_NAME.search(rest)
      instructions[name] = Instruction(current, opcode.group(1) if opcode else "?", callees,
                                       op_name.group(1) if op_name else "", bool(root))
      computations[current].append(name)
  return Hlo(entry, computations, instructions)


def flatten_schedule(hlo: Hlo) -> Schedule:
  """One step per instruction from the entry on, called computations laid out just before their caller."""
  order, step, spans, loops = [], {}, {}, {}

  def visit(computation):
    first = len(order)
    for name in hlo.computations[computation]:
      instruction, called_from = hlo.instructions[name], len(order)
      if instruction.opcode in CALLERS:
        for _, callee in instruction.callees:
          if callee in hlo.computations:
            visit(callee)
      step[name] = len(order)
      order.append(name)
      if instruction.opcode == "while":
        loops[name] = (called_from, step[name])
    spans[computation] = (first, len(order) - 1)

  visit(hlo.entry)
  return Schedule(order, step, spans, loops)


def device_temp_allocation(text: str) -> int | None:
  """Index of the largest preallocated-temp allocation without a color (colored ones live in host memory)."""
  temps = [(int(size), int(index)) for index, size, attributes in ALLOCATION.findall(text)
           if "preallocated-temp" in attributes and "color" not in attributes]
  return max(temps)[1] if temps else None


def parse_allocation(text: str, index: int) -> tuple[int | None, dict]:
  """Size of allocation `index` and its values: {value id: Slot}."""
  size, slots, inside = None, {}, False
  for line in text.splitlines():
    header = ALLOCATION.match(line)
    if header:
      inside = int(header.group(1)) == index
      size = int(header.group(2)) if inside else size
    elif not line.startswith(" "):
      inside = False
    elif inside and (match := SLOT.match(line)):
      value_id, name, value_size, offset, shape = match.groups()
      slots[int(value_id)] = Slot(name, int(value_size), int(offset), shape)
  return size, slots


def parse_values(text: str) -> dict:
  """{value id: Value} from the `<ID NAME @K>` blocks of a buffer-assignment-values text."""
  values, current, section = {}, None, None
  for line in text.splitlines():
    header = VALUE.match(line)
    if header:
      current = values[int(header.group(1))] = Value(header.group(2))
      section = None
    elif current is None:
      continue
    elif line in (" positions:", " uses:"):
      section = current.positions if line == " positions:" else current.uses
    elif line.startswith(" from instruction:"):
      op_name = OP_NAME.search(line)
      current.op_name, section = op_name.group(1) if op_name else "", None
    elif section is not None and line.startswith("  ") and line.strip() != "(none)":
      section.append(re.split(r"[ ,]", line.strip())[0])  # `name {index}` or `name, operand N {index}`
  return values


def live_range(value: Value, hlo: Hlo, schedule: Schedule) -> tuple[int, int] | None:
  """First and last step the value is live, None if none of its positions is scheduled."""
  steps = [schedule.step[position] for position in value.positions if position in schedule.step]
  if not steps:
    return None
  start, end = min(steps), max(steps)
  for use in value.uses:
    if use not in schedule.step:
      continue
    user = hlo.instructions[use]
    body = dict(user.callees).get("body") if user.opcode == "while" else None
    end = max(end, schedule.spans[body][0] if body in schedule.spans else schedule.step[use])
  for position in value.positions:
    instruction = hlo.instructions.get(position)
    if instruction is None or instruction.computation == hlo.entry or instruction.computation not in schedule.spans:
      continue
    first, last = schedule.spans[instruction.computation]
    start = min(start, first) if instruction.opcode == "parameter" else start
    end = max(end, last) if instruction.is_root else end
  return start, end


def live_ranges(slots: dict, values: dict, hlo: Hlo, schedule: Schedule) -> dict:
  """{value id: (first step, last step)} for the allocation's values that are scheduled."""
  spans = {value_id: live_range(values[value_id], hlo, schedule) for value_id in slots if value_id in values}
  return {value_id: span for value_id, span in spans.items() if span is not None}


def peak(ranges: dict, slots: dict, num_steps: int) -> tuple[int, int]:
  """(step, bytes) where the live values take the most bytes, each offset counted once at its largest live value."""
  changes = collections.defaultdict(list)  # step -> (value id, +1 born / -1 dead)
  for value_id, (start, end) in ranges.items():
    changes[start].append((value_id, 1))
    changes[end + 1].append((value_id, -1))
  sizes_at = collections.defaultdict(collections.Counter)  # offset -> sizes of the values live there
  live_bytes, peak_step, peak_bytes = 0, 0, 0
  for step in range(num_steps):
    for value_id, change in changes[step]:
      slot = slots[value_id]
      sizes = sizes_at[slot.offset]
      before = max(sizes, default=0)
      sizes[slot.size] += change
      if not sizes[slot.size]:
        del sizes[slot.size]
      live_bytes += max(sizes, default=0) - before
    if live_bytes > peak_bytes:
      peak_step, peak_bytes = step, live_bytes
  return peak_step, peak_bytes


def buffers(live: list, slots: dict, values: dict) -> list:
  """One value per offset among the live ones: the largest, preferring one with its own op_name (not a phi)."""
  chosen = {}
  for value_id in sorted(live):
    slot = slots[value_id]
    rank = (slot.size, "(phi)" not in slot.name, bool(values[value_id].op_name))
    if slot.offset not in chosen or rank > chosen[slot.offset][0]:
      chosen[slot.offset] = (rank, value_id)
  return [value_id for _, value_id in chosen.values()]


def op_path(value_id: int, slots: dict, values: dict, ranges: dict) -> str:
  """The op_name that made the value without its last primitive (`(no op_name) NAME` without one)."""
  op_name = values[value_id].op_name
  slot = slots[value_id]
  if "(phi)" in slot.name:  # a loop parameter or result: named after the value it carries
    aliases = [other for other in ranges if other != value_id and "(phi)" not in slots[other].name
               and values[other].op_name and (slots[other].offset, slots[other].shape) == (slot.offset, slot.shape)]
    if aliases:
      op_name = values[min(aliases, key=lambda other: abs(ranges[other][0] - ranges[value_id][0]))].op_name
  if not op_name:
    return "(no op_name) " + re.sub(r"(\.\d+)*(\{.*)?$", "", slot.name)
  return op_name.rsplit("/", 1)[0]


def grouped(value_ids: list, slots: dict, key, top: int, name: str) -> list:
  """[{name: key, gib, bytes, count}] of the values grouped by key(value id), largest first."""
  totals = collections.defaultdict(lambda: [0, 0])
  for value_id in value_ids:
    totals[key(value_id)][0] += slots[value_id].size
    totals[key(value_id)][1] += 1
  rows = sorted(totals.items(), key=lambda item: (-item[1][0], item[0]))[:top]
  return [{name: group, "gib": round(size / GIB, 3), "bytes": size, "count": count} for group, (size, count) in rows]


def analyze(hlo_text: str, assignment_text: str, values_text: str, allocation: int | None = None, top: int = 25):
  """The peak of one allocation as a JSON-able dict (see the module docstring); raises ValueError if none."""
  index = device_temp_allocation(assignment_text) if allocation is None else allocation
  size, slots = parse_allocation(assignment_text, index) if index is not None else (None, {})
  if size is None:
    raise ValueError("no preallocated-temp allocation without a color" if index is None else f"no allocation {index}")
  hlo = parse_hlo(hlo_text)
  schedule = flatten_schedule(hlo)
  values = parse_values(values_text)
  ranges = live_ranges(slots, values, hlo, schedule)
  step, peak_bytes = peak(ranges, slots, len(schedule.order))
  live = buffers([value_id for value_id, (start, end) in ranges.items() if start <= step <= end], slots, values)
  at_peak = hlo.instructions[schedule.order[step]]
  loops = sorted((span, name) for name, span in schedule.loops.items() if span[0] <= step < span[1])
  return dict(
      allocation=index, allocation_gib=round(size / GIB, 3), allocation_bytes=size, values=len(slots),
      unscheduled_values=len(slots) - len(ranges), steps=len(schedule.order), peak_step=step,
      peak_gib=round(peak_bytes / GIB, 3), peak_bytes=peak_bytes, peak_fraction=round(peak_bytes / size, 4),
      peak_instruction=schedule.order[step], peak_opcode=at_peak.opcode, peak_computation=at_peak.computation,
      peak_op_name=at_peak.op_name, peak_loops=[dict(instruction=name, op_name=hlo.instructions[name].op_name)
                                                for _, name in loops],
      live_buffers=len(live),
      by_shape=grouped(live, slots, lambda value_id: re.sub(r"\{[^}]*\}", "", slots[value_id].shape), top, "shape"),
      by_op=grouped(live, slots, lambda value_id: op_path(value_id, slots, values, ranges), top, "op"))


def dump_files(directory: str, module: str) -> list:
  """The module's scheduled HLO, buffer assignment and values files (the newest compile); exits 2 if one is missing."""
  pattern = os.path.join(directory, f"module_*.{module}.*after_optimizations.txt")
  hlos = sorted(glob.glob(pattern), key=lambda path: int(re.search(r"module_(\d+)", os.path.basename(path)).group(1)))
  if not hlos:
    fail(f"missing {pattern} (dump with --xla_dump_to=DIR --xla_dump_hlo_as_text)")
  stem = hlos[-1][:-len(".txt")]
  paths = [hlos[-1], stem + "-buffer-assignment.txt", stem + "-buffer-assignment-values.txt"]
  for path in paths[1:]:
    if not os.path.isfile(path):
      fail(f"missing {path}")
  return paths


def fail(message: str):
  print(f"xla_peak_live: {message}", file=sys.stderr)
  raise SystemExit(2)


def print_report(summary: dict):
  print(f"allocation {summary['allocation']}: {summary['allocation_gib']:.3f} GiB ({summary['allocation_bytes']} B), "
        f"{summary['values']} values, {summary['unscheduled_values']} without a scheduled position (skipped)")
  print(f"peak: {summary['peak_gib']:.3f} GiB live = {100 * summary['peak_fraction']:.1f} % of the allocation, "
        f"at step {summary['peak_step']} of {summary['steps']}")
  print(f"  instruction: {summary['peak_instruction']} ({summary['peak_opcode']} in {summary['peak_computation']})")
  print(f"  op_name: {summary['peak_op_name']}")
  for loop in summary["peak_loops"]:
    print(f"  inside {loop['instruction']}: {loop['op_name']}")
  for title, rows, name in (("shape", summary["by_shape"], "shape"),
                            ("op_name path without its last primitive", summary["by_op"], "op")):
    print(f"live at the peak by {title} (GiB, buffers):")
    for row in rows:
      print(f"  {row['gib']:7.3f}  x{row['count']:<4d} {row[name]}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("dump_dir", help="the --xla_dump_to directory")
  parser.add_argument("--module", default="jit_train_step", help="the HLO module's name")
  parser.add_argument("--allocation", type=int, help="allocation index (default: the largest device temp one)")
  parser.add_argument("--top", type=int, default=25, help="how many groups to list by shape and by op_name")
  args = parser.parse_args(argv)
  paths = dump_files(args.dump_dir, args.module)
  print(f"module: {paths[0]}")
  try:
    summary = analyze(*(pathlib.Path(path).read_text() for path in paths), allocation=args.allocation, top=args.top)
  except ValueError as error:
    fail(f"{error} in {paths[1]}")
  print_report(summary)
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
