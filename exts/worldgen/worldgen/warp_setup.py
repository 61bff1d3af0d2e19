"""Import Warp configured for worldgen: quiet (no per-module load lines in the middle of progress
bars); warnings and errors still print."""

from __future__ import annotations


def quiet_warp():
    import warp as wp

    wp.config.quiet = True
    if hasattr(wp, "LOG_WARNING"):
        wp.config.log_level = wp.LOG_WARNING
    return wp
