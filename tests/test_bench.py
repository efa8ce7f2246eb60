"""agibot_jax.bench: the compiled plan's largest arrays (XLA's memory analysis: tests/test_assemble.py, slow run)."""

import jax
import jax.numpy as jnp

from agibot_jax import bench


def test_largest_buffers_finds_the_scan_stack_a_kernel_tuple_and_host_arrays():
  def loss(x):
    def body(c, _):
      c = jnp.tanh(c @ c)
      return c, c
    return jax.lax.scan(body, x, None, length=4)[1].sum()

  compiled = jax.jit(jax.grad(loss)).lower(jnp.ones((128, 128))).compile()
  top = bench.largest_buffers(compiled.as_text(), 3)
  # The scan stacks its 4 carries for the backward: f32[4,128,128], 256 KiB, made in the loop body.
  assert top[0]["array"] == "f32[4,128,128]" and top[0]["gib"] == round(4 * 128 * 128 * 4 / 2**30, 3)
  assert all(b["opcode"] not in ("parameter", "get-tuple-element", "bitcast") for b in top)

  hlo = """HloModule m

%fused_computation (param_0: f32[1024,1024]) -> f32[1024,1024] {
  %param_0 = f32[1024,1024]{1,0} parameter(0)
  ROOT %big_inside = f32[1024,1024]{1,0} exponential(%param_0)
}

ENTRY %main (p: bf16[8,16]) -> f32[8] {
  %p = bf16[8,16]{1,0} parameter(0)
  %attn = (bf16[8,16]{1,0}, f32[8,2,4]{2,1,0}, u8[0]{0}) custom-call(%p), custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(f)/attention"}
  %fusion = f32[1024,1024]{1,0} fusion(%p), kind=kLoop, calls=%fused_computation
  %stack = bf16[27,8,16]{2,1,0:S(5)} custom-call(%p), custom_call_target="MoveToHost"
  ROOT %r = f32[8]{0} reduce(%p)
}
"""
  found = bench.largest_buffers(hlo, 10)
  names = [b["instruction"] for b in found]
  assert names[0] == "fusion" and found[0]["gib"] == round(4 / 1024, 3)
  assert "big_inside" not in names and "p" not in names  # inside a fusion body; a parameter
  assert {"attn#0", "attn#1", "attn#2"} <= set(names)
  assert next(b for b in found if b["instruction"] == "attn#1")["array"] == "f32[8,2,4]"
  # An offloaded array (memory space S(5)) is in host memory; the rest on the device.
  memory = {b["instruction"]: b["memory"] for b in found}
  assert memory["stack"] == "host" and memory["fusion"] == memory["attn#1"] == "device"
