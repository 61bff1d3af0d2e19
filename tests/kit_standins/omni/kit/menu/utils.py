MENUS: dict[str, list] = {}


class MenuItemDescription:
    def __init__(self, name="", onclick_fn=None, **kwargs):
        self.name, self.onclick_fn = name, onclick_fn


def add_menu_items(items, name, menu_index=0, can_rebuild_menus=True, delegate=None):
    MENUS.setdefault(name, []).extend(items)


def remove_menu_items(items, name, can_rebuild_menus=True):
    for item in items:
        MENUS[name].remove(item)
    if not MENUS[name]:
        del MENUS[name]
