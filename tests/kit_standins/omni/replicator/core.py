"""omni.replicator.core stand-in: the Writer base class and the two registries a writer touches."""


class Writer:
    """Replicator calls ``write(data)`` once per captured frame and ``on_final_frame()`` at the end."""


class _Annotator:
    def __init__(self, name, init_params=None):
        self.name, self.init_params = name, dict(init_params or {})


class AnnotatorRegistry:
    @staticmethod
    def get_annotator(name, init_params=None, **kwargs):
        return _Annotator(name, init_params)


class WriterRegistry:
    REGISTERED: dict[str, type] = {}

    @classmethod
    def register(cls, writer):
        cls.REGISTERED[writer.__name__] = writer

    @classmethod
    def get(cls, name):
        return cls.REGISTERED[name]


class _Orchestrator:
    def wait_until_complete(self):
        """Every captured frame has been handed to the writers (the stand-in hands them at once)."""


orchestrator = _Orchestrator()
