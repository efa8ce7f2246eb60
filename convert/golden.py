"""The result of comparing one output of our port with the reference's golden tensors."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class OutputCheck:
  name: str
  max_abs_err: float
  tolerance: float

  @property
  def ok(self) -> bool:
    return self.max_abs_err <= self.tolerance
