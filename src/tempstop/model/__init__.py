"""The TempMe-STOP model on an open_clip backbone.

``create_unified_model(cfg)`` builds :class:`UnifiedTempMeSTOPModel`; see docs/ARCHITECTURE.md
("Model API") for the contract. Importing this package has no side effects (the tiny
open_clip config is registered when a model is first created).
"""

from tempstop.model.unified import UnifiedTempMeSTOPModel, create_unified_model

__all__ = ["UnifiedTempMeSTOPModel", "create_unified_model"]
