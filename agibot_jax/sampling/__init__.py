"""Sampling: the rectified-flow UniPC solver, guidance and conditional-frame inputs, sample-video writing."""
