GLOBAL_EVENT_UPDATE = "omni.kit.app.update"
EXTENSION_PATHS: dict[str, str] = {}


class _ExtensionManager:
    def get_extension_path(self, ext_id):
        return EXTENSION_PATHS[ext_id]


class _App:
    def get_extension_manager(self):
        return _ExtensionManager()


def get_app():
    return _App()
