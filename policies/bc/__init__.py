from .configuration_bc import BCConfig
from .modeling_bc import BCPolicy

__all__ = ["BCConfig", "BCPolicy"]
