"""Evaluation: control adherence and reconstruction of generated samples, and the validation loss.

  metrics.py     pixel metrics of one view's video: edge F1 with a pixel tolerance, SSIM, PSNR
  scoring.py     scores of one sample: a metric per control type (registry), reconstruction, view and sample means
  validation.py  held-out samples and the validation loss with fixed draws; its train-loop callback
  report.py      the evaluation report: JSON, HTML page, frame grids (agibot_jax.eval)
"""
