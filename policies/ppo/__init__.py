from .configuration_ppo import PPOConfig
from .modeling_ppo import PPOPolicy

__all__ = ["PPOConfig", "PPOPolicy"]
