"""The registered model: an MLflow pyfunc that embeds text queries and videos.

Logged "from code" by
:meth:`tempstop_pipelines.tracking.runs.MlflowTracker.register_checkpoint`: MLflow copies this
file into the model and runs it when loading, so the model needs only the ``tempstop``
package, not this repository (this file imports nothing of it). The checkpoint and its config
are artifacts of the model version (``artifacts/best_model.pth``), which is also what
:mod:`tempstop.inference.sources` downloads for ``tempstop evaluate``, ``index`` and ``serve``.

    model = mlflow.pyfunc.load_model("models:/tempstop-unified@champion")
    model.predict(pd.DataFrame({"text": ["a red circle moves left, then ..."]}))  # [N, D]
    model.predict(pd.DataFrame({"video": ["clip.mp4"]}))                          # [N, D]

Rows are L2-normalised embeddings; the dot product of a text row and a video row is the
retrieval score.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import torch

from tempstop.data.transforms import frames_to_tensor
from tempstop.data.video import sample_clip
from tempstop.inference.checkpoint import model_from_checkpoint


class TempStopRetrievalModel(mlflow.pyfunc.PythonModel):
    """Text and video embeddings from a TempMe-STOP checkpoint."""

    def load_context(self, context) -> None:
        """Build the model from the version's checkpoint artifact (on CPU)."""
        self.model, self.cfg, _ = model_from_checkpoint(context.artifacts["checkpoint"], "cpu")

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        """Embeddings ([N, D], L2-normalised) of the "text" column, else of the "video" column."""
        columns = set(getattr(model_input, "columns", []))
        with torch.no_grad():
            if "text" in columns:
                ids, mask = self.model.tokenize([str(t) for t in model_input["text"]])
                return self.model.encode_text(ids, mask).float().numpy()
            if "video" in columns:
                return np.stack([self._embed_video(str(p)) for p in model_input["video"]])
        raise ValueError("input needs a 'text' column (queries) or a 'video' column (mp4 paths)")

    def _embed_video(self, path: str) -> np.ndarray:
        """Sample, resize and embed one clip the way `tempstop extract` prepares training data."""
        num, size = self.cfg.model.frames, self.cfg.extract.size
        frames = sample_clip(path, num, size).frames[0]  # [k <= num, S, S, 3]
        padded = np.zeros((num, size, size, 3), dtype=np.uint8)
        padded[: len(frames)] = frames
        mask = torch.zeros(1, num, dtype=torch.bool)
        mask[0, : len(frames)] = True
        video = frames_to_tensor(torch.from_numpy(padded[None]))
        return self.model.encode_video(video, mask)[0].float().numpy()


mlflow.models.set_model(TempStopRetrievalModel())
