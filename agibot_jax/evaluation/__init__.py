"""Evaluation of generated samples (host NumPy): control adherence and reconstruction of the ground truth.

  metrics.py  pixel metrics of one view's video: edge F1 with a pixel tolerance, SSIM, PSNR
  scoring.py  scores of one sample: a metric per control type (registry), reconstruction, view and sample means
"""
