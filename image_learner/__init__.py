"""Image Learner: train and honestly evaluate an image classifier or regressor (Ludwig + timm).

The stages, in the order data flows (docs/architecture.md draws them):
``data`` (unpack, match CSV rows, image checks, leakage guard, task choice) → ``split_utils`` (top level)
→ ``training`` (Ludwig config, trainer, fits, cross-validation) → ``evaluation`` (metrics, predictions
table) → ``report`` (plots, images; ``report_builder`` at the top level is its entry) → ``model``
(archive, manifest, predict). ``pipeline`` runs them for training; ``image_learner_cli`` is the command.
"""
