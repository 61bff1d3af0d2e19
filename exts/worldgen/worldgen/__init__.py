"""worldgen: scenario manifests to USD stages, seed trajectories, world-model branches, physics
checks and policies. Importing it never imports Kit (omni, isaacsim, carb)."""

__version__ = "0.1.0"
