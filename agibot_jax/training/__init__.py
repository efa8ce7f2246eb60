"""Training building blocks: rectified-flow objective, LR schedule, optimizer, power EMA."""
