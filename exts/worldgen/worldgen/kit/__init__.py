"""Kit-only layer: the omni.ext entry point and the omni.ui window. Untested outside Isaac Sim.

Importing this package outside Isaac Sim / Kit raises an ImportError that says so; ``import worldgen``
never imports it.
"""

try:
    import omni.ext  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only outside Kit
    raise ImportError(
        "worldgen.kit runs inside Isaac Sim / Kit only (start it with "
        "`isaacsim --ext-folder exts --enable worldgen`); use the `worldgen` CLI or the worldgen "
        "package everywhere else"
    ) from exc

from .extension import WorldgenExtension

__all__ = ["WorldgenExtension"]
