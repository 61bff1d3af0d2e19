VALUES: dict[str, object] = {}


class _Settings:
    def get(self, path):
        return VALUES.get(path)


def get_settings():
    return _Settings()
