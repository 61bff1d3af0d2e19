"""Kit-only layer: the window extension (``worldgen.kit.extension``, the ``[[python.module]]`` Kit loads)
and the Replicator writer (``worldgen.kit.replicator_writer``). Written against the Isaac Sim 5.1 API,
never run here. ``import worldgen`` never imports this package; importing it outside Isaac Sim / Kit
raises an ImportError that says how to start it.
"""

try:
    import omni.ext  # noqa: F401
except ImportError:  # pragma: no cover - the branch taken everywhere but inside Kit
    raise ImportError(
        "worldgen.kit runs inside Isaac Sim / Kit only (omni.ext is not importable here); start Isaac Sim "
        "with `isaacsim --ext-folder exts --enable worldgen`, or use the `worldgen` command and package"
    ) from None
