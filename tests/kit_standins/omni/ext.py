class IExt:
    """omni.ext.IExt: Kit calls on_startup(ext_id) and on_shutdown()."""
