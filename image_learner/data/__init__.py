"""Data stage: unpack the images ZIP, match CSV rows to images, check images, guard against leaks, choose the task."""
