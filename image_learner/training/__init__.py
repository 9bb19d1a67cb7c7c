"""Training stage: the Ludwig config around a timm backbone, the trainer, one fit, cross-validation, devices."""
