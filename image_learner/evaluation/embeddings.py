"""A map of the data: each image's penultimate-layer features (the backbone's pooled output, which is the
Ludwig image encoder's output) from the delivered model, written as embeddings.csv, and a 2-D projection
for the report.

Images are prepared as the report's Grad-CAM prepares them (RGB, resized to the model's side, scaled to
[0, 1]; the encoder normalises with the backbone's mean and std itself). The projection is capped at
MAP_CAP points (a seeded sample, suspected label errors always kept): t-SNE's cost grows faster than the
row count, and a scatter of more points is unreadable anyway. embeddings.csv holds every image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MAP_CAP = 3000  # points in the report's map (embeddings.csv has every image)
PCA_FIRST = 50  # t-SNE runs on the first principal components (its authors' advice; faster)
BATCH = 32


def encoder_features(ludwig_model, paths: list[str], image_size: int, batch_size: int = BATCH,
                     workers: int = 1) -> np.ndarray:
    """rows x width: the image encoder's output for each image file (no gradients, eval mode; the model
    stays where Ludwig left it and is put back in its own train/eval mode). The files are decoded in
    ``workers`` threads, the next batch while the encoder runs this one (as predict decodes)."""
    import torch

    from image_learner.model.inference_network import decoded_batches

    ecd = ludwig_model.model
    encoder = ecd.input_features.get("image_path").encoder_obj
    device = next(ecd.parameters()).device
    was_training = ecd.training
    ecd.eval()
    chunks = []
    try:
        with torch.no_grad():
            # the pixels the model read in training (EXIF orientation, RGB, the same resize): one decoder
            for start, decoded in decoded_batches(paths, image_size, batch_size, workers):
                for k, (_, _, reason) in enumerate(decoded, start):
                    if reason is not None:  # the files training read: an unreadable one is our bug
                        raise ValueError(f"{paths[k]}: {reason}")
                batch = [pixels.astype(np.float32) / 255.0 for pixels, _, _ in decoded]
                x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(device)
                out = encoder(x)["encoder_output"]
                chunks.append(out.reshape(len(batch), -1).float().cpu().numpy())
    finally:
        ecd.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def embeddings_table(images, splits, labels, features: np.ndarray) -> pd.DataFrame:
    """embeddings.csv: image, split, label, then f0..f{width-1}."""
    table = pd.DataFrame({"image": list(images), "split": list(splits), "label": list(labels)})
    columns = pd.DataFrame(features, columns=[f"f{k}" for k in range(features.shape[1])])
    return pd.concat([table, columns], axis=1)


def sample_rows(n: int, keep: np.ndarray, cap: int = MAP_CAP, seed: int = 42) -> np.ndarray:
    """Row indices for the map: all rows when n <= cap, else the ``keep`` rows plus a seeded sample."""
    if n <= cap:
        return np.arange(n)
    kept = np.flatnonzero(keep)[:cap]
    rest = np.setdiff1d(np.arange(n), kept)
    chosen = np.random.default_rng(seed).choice(rest, cap - len(kept), replace=False)
    return np.sort(np.concatenate([kept, chosen]))


def project(features: np.ndarray, seed: int = 42) -> tuple[np.ndarray, str]:
    """(rows x 2, method): t-SNE on the first PCA_FIRST principal components of the standardised features
    (plain PCA below 10 rows, where t-SNE's perplexity has no room)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = features - features.mean(axis=0)
    scale = x.std(axis=0)
    x = x / np.where(scale > 0, scale, 1)
    n_components = max(1, min(PCA_FIRST, x.shape[0] - 1, x.shape[1]))
    reduced = PCA(n_components=n_components, random_state=seed).fit_transform(x) if x.shape[0] > 1 else x
    if x.shape[0] < 10 or reduced.shape[1] < 2:
        two = np.zeros((x.shape[0], 2))
        two[:, :min(2, reduced.shape[1])] = reduced[:, :2]
        return two, "PCA (too few images for t-SNE)"
    perplexity = float(min(30, (x.shape[0] - 1) / 3))
    return (TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced),
            f"t-SNE (perplexity {perplexity:.0f}) on the first {reduced.shape[1]} principal components")
