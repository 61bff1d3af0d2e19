"""omni.ui stand-in: widgets remember their arguments; windows and buttons are registered so a test can
find and press them."""

WINDOWS: list["Window"] = []
BUTTONS: dict[str, list] = {}
LABELS: list["Label"] = []


class _Model:
    def __init__(self, value=None):
        self.value, self.end_edit_fns = value, []

    def set_value(self, value):
        self.value = value

    def get_value_as_string(self):
        return "" if self.value is None else str(self.value)

    def get_value_as_int(self):
        return int(self.value or 0)

    def add_end_edit_fn(self, fn):
        self.end_edit_fns.append(fn)

    def end_edit(self):
        for fn in self.end_edit_fns:
            fn(self)

    def get_item_value_model(self):
        return self

    @property
    def as_int(self):
        return int(self.value or 0)


class _Widget:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.model = _Model()
        self.width, self.height = kwargs.get("width"), kwargs.get("height")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class VStack(_Widget): ...


class HStack(_Widget): ...


class StringField(_Widget): ...


class IntField(_Widget): ...


class ProgressBar(_Widget): ...


class ScrollingFrame(_Widget): ...


class Frame(_Widget):
    """A frame whose content its ``build_fn`` makes; omni.ui defers ``rebuild`` to the next draw, the
    stand-in runs it at once."""

    def __init__(self, build_fn=None, **kwargs):
        super().__init__(**kwargs)
        self.build_fn, self.builds = build_fn, 0
        self.rebuild()

    def rebuild(self):
        self.builds += 1
        if self.build_fn is not None:
            self.build_fn()


class Label(_Widget):
    def __init__(self, text="", **kwargs):
        super().__init__(text, **kwargs)
        self.text = text
        LABELS.append(self)


class Button(_Widget):
    def __init__(self, text="", clicked_fn=None, **kwargs):
        super().__init__(text, **kwargs)
        BUTTONS.setdefault(text, []).append(clicked_fn)


class ComboBox(_Widget):
    def __init__(self, index, *items, **kwargs):
        super().__init__(index, *items, **kwargs)
        self.model = _Model(index)


class ByteImageProvider:
    def __init__(self):
        self.data, self.size = None, None

    def set_bytes_data(self, data, size):
        self.data, self.size = data, list(size)


class ImageWithProvider(_Widget):
    def __init__(self, provider, **kwargs):
        super().__init__(provider, **kwargs)
        self.provider = provider


def Pixel(value):  # noqa: N802 - omni.ui's spelling
    return value


class Window:
    def __init__(self, title, width=400, height=300, visible=True, **kwargs):
        self.title, self.visible, self.destroyed = title, visible, False
        self.frame = _Widget()
        WINDOWS.append(self)

    def destroy(self):
        self.destroyed = True
