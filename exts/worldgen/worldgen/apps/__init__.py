"""The front doors: the ``worldgen`` command line, the main job (``make demo``), the policy comparison
and the Kit window's controller. The only layer that imports both ``world_models`` and ``policies``;
nothing below it imports it (see docs/ARCHITECTURE.md)."""
