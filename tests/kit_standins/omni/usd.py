OPENED: list[str] = []


class _Context:
    def open_stage(self, path, on_finish_fn=None):
        OPENED.append(str(path))
        return True


def get_context():
    return _Context()
