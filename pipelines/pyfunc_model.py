"""The registered model: an MLflow pyfunc that embeds text queries and videos.

Logged "from code" by :meth:`pipelines.tracking.MlflowTracker.register_checkpoint`: MLflow
copies this file into the model and runs it when loading, so the model needs only the
``tempstop`` package, not this repository. The checkpoint and its config are artifacts of the
model version (``artifacts/best_model.pth``), which is also what ``resolve_model_uri`` hands
to ``tempstop evaluate`` / ``tempstop search``.

    model = mlflow.pyfunc.load_model("models:/tempstop-unified@champion")
    model.predict(pd.DataFrame({"text": ["a red circle moves left, then ..."]}))  # [N, D]
    model.predict(pd.DataFrame({"video": ["clip.mp4"]}))                          # [N, D]

Rows are L2-normalised embeddings; the dot product of a text row and a video row is the
retrieval score.
"""

from __future__ import annotations

import mlflow
import numpy as np


class TempStopRetrievalModel(mlflow.pyfunc.PythonModel):
    """Text and video embeddings from a TempMe-STOP checkpoint."""

    def load_context(self, context) -> None:
        import torch

        from tempstop.config import UnifiedModelConfig
        from tempstop.model import create_unified_model

        checkpoint = torch.load(context.artifacts["checkpoint"], map_location="cpu", weights_only=True)
        self.cfg = UnifiedModelConfig.from_dict(checkpoint["config"], "checkpoint config")
        self.model = create_unified_model(self.cfg)
        self.model.load_state_dict(checkpoint["model"])
        self.model.eval()

    def predict(self, context, model_input, params=None):
        import torch

        columns = set(getattr(model_input, "columns", []))
        with torch.no_grad():
            if "text" in columns:
                texts = [str(t) for t in model_input["text"]]
                ids, mask = self.model.tokenize(texts)
                return self.model.encode_text(ids, mask).float().numpy()
            if "video" in columns:
                return np.stack([self._embed_video(str(p)) for p in model_input["video"]])
        raise ValueError("input needs a 'text' column (queries) or a 'video' column (mp4 paths)")

    def _embed_video(self, path: str) -> np.ndarray:
        import torch

        from tempstop.data.transforms import frames_to_tensor
        from tempstop.data.video import load_frames

        frames, mask = load_frames(path, self.cfg.extract.frames, self.cfg.extract.size)
        video = frames_to_tensor(frames[None])
        video_mask = torch.as_tensor(np.asarray(mask)[None])
        return self.model.encode_video(video, video_mask)[0].float().numpy()


mlflow.models.set_model(TempStopRetrievalModel())
