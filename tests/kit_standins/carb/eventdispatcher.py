import weakref

OBSERVERS: "weakref.WeakSet[Observer]" = weakref.WeakSet()


class Observer:
    """Kit's observer guard: the subscription lives as long as the object does."""

    def __init__(self, event_name, on_event, observer_name):
        self.event_name, self.on_event, self.name = event_name, on_event, observer_name


class _Dispatcher:
    def observe_event(self, event_name, on_event, observer_name="", **kwargs):
        observer = Observer(event_name, on_event, observer_name)
        OBSERVERS.add(observer)
        return observer

    def dispatch(self, event_name):
        for observer in list(OBSERVERS):
            if observer.event_name == event_name:
                observer.on_event(None)


def get_eventdispatcher():
    return _Dispatcher()
