from .configuration_diffusion import DiffusionConfig
from .modeling_diffusion import DiffusionPolicy

__all__ = ["DiffusionConfig", "DiffusionPolicy"]
