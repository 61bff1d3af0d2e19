"""The worldgen window in Isaac Sim: an ``omni.ext.IExt`` with a Window-menu entry, written against the
documented Isaac Sim 5.1 / Kit 107 API (omni.ui, omni.kit.menu.utils, carb.eventdispatcher,
carb.settings, omni.usd). Never run: Kit cannot be installed on the development machines; the tests
check its lifecycle against stand-ins only.

Every callback is a one-line call into :class:`worldgen.apps.window.WorldgenApp` followed by a redraw.
Long work never runs on the UI thread: previews, seed recording and ``worldgen run`` are subprocess
jobs that an update-loop observer polls twice a second. ``on_shutdown`` undoes ``on_startup`` item by
item: jobs cancelled, observer released, menu entry removed, window destroyed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import carb.eventdispatcher
import carb.settings
import omni.ext
import omni.kit.app
import omni.ui as ui
import omni.usd
from omni.kit.menu.utils import MenuItemDescription, add_menu_items, remove_menu_items

from ..apps.run import STAGES
from ..apps.window import AppState, WorldgenApp

EXTENSION = "worldgen"
MENU = "Window"
POLL_S = 0.5
PROBLEM_STYLE = {"color": 0xFF5050E0}  # ABGR: a readable red


def setting(key: str, default):
    """``[settings] exts."worldgen".<key>`` from extension.toml (or the app's overrides)."""
    value = carb.settings.get_settings().get(f"/exts/{EXTENSION}/{key}")
    return default if value is None else value


class WorldgenExtension(omni.ext.IExt):
    def on_startup(self, ext_id: str) -> None:
        self._window = self._menu_items = self._update_observer = None  # what on_shutdown undoes
        self._app = WorldgenApp(
            AppState(
                output_dir=setting("output_dir", "data/worldgen"),
                backend=setting("default_backend", "newton"),
                python=setting("python", "") or sys.executable,
            )
        )
        self._last_poll = 0.0
        self._field_models: dict[str, ui.AbstractValueModel] = {}
        self._preview_provider = ui.ByteImageProvider()
        self._window = ui.Window("worldgen", width=560, height=820, visible=True)
        self._build()
        self._menu_items = [MenuItemDescription(name="worldgen", onclick_fn=self._toggle_window)]
        add_menu_items(self._menu_items, MENU)
        self._update_observer = carb.eventdispatcher.get_eventdispatcher().observe_event(
            event_name=omni.kit.app.GLOBAL_EVENT_UPDATE,
            on_event=self._on_update,
            observer_name=f"{EXTENSION}.jobs",
        )
        default = setting("default_scenario", "")
        if default:
            root = omni.kit.app.get_app().get_extension_manager().get_extension_path(ext_id)
            self._path.model.set_value(str(Path(root) / default))
            self._on_open()

    def on_shutdown(self) -> None:
        # Each step guarded, so a startup that stopped half way is undone as far as it got.
        jobs = list(self._app.jobs.values()) if getattr(self, "_app", None) is not None else []
        for job in jobs:
            job.stop()  # all asked at once, then each waited for: no orphaned subprocesses
        for job in jobs:
            job.cancel()
        self._update_observer = None  # dropping the observer unsubscribes it
        if getattr(self, "_menu_items", None):
            remove_menu_items(self._menu_items, MENU)
        self._menu_items = []
        if getattr(self, "_window", None) is not None:
            self._window.destroy()
        self._window = None
        self._preview_provider = None
        self._field_models = {}

    # -- layout --------------------------------------------------------------------------------------

    def _build(self) -> None:
        with self._window.frame, ui.VStack(spacing=4):
            with ui.HStack(height=22):
                ui.Label("Manifest", width=70)
                self._path = ui.StringField()
                ui.Button("Open", width=60, clicked_fn=self._on_open)
                ui.Button("Save", width=60, clicked_fn=self._on_save)
                ui.Button("Undo", width=60, clicked_fn=self._on_undo)
            self._status = ui.Label("", word_wrap=True, height=0)
            self._messages = ui.Label("", word_wrap=True, height=0, style=PROBLEM_STYLE)
            with ui.ScrollingFrame(height=260):
                # Rebuilt through its build_fn (deferred by omni.ui), never from inside a field's callback.
                self._fields_frame = ui.Frame(build_fn=self._build_fields)
            with ui.HStack(height=24):
                ui.Label("Seed", width=40)
                self._seed = ui.IntField(width=60)
                ui.Button("Compile and open", clicked_fn=self._on_compile)
            with ui.HStack(height=24):
                ui.Label("Preview seeds", width=90)
                self._preview_seeds = ui.StringField(width=80)
                self._preview_seeds.model.set_value("0-7")
                ui.Button("Preview", clicked_fn=self._on_preview)
            with ui.ScrollingFrame(height=240):
                self._preview = ui.ImageWithProvider(self._preview_provider)
            with ui.HStack(height=24):
                ui.Label("Seeds", width=40)
                self._seed_count = ui.IntField(width=60)
                self._seed_count.model.set_value(10)
                ui.Button("Record seeds", clicked_fn=self._on_record_seeds)
                ui.Button("Cancel", width=60, clicked_fn=lambda: self._on_cancel("seeds"))
            with ui.HStack(height=24):
                ui.Label("Run until", width=60)
                self._until = ui.ComboBox(len(STAGES) - 1, *STAGES)
                ui.Button("Run", clicked_fn=self._on_run)
                ui.Button("Cancel", width=60, clicked_fn=lambda: self._on_cancel("run"))
                ui.Button("Open report", clicked_fn=self._on_open_report)
            self._progress = ui.ProgressBar(height=16)
            self._jobs = ui.Label("", word_wrap=True, height=0)

    def _build_fields(self) -> None:
        """A text field per main manifest field (one line of YAML), its problems under it."""
        self._field_models = {}
        if self._app.document is None:
            return
        with ui.VStack(spacing=2):
            for path in self._app.fields():
                with ui.HStack(height=20):
                    ui.Label(path, width=230)
                    field = ui.StringField()
                    field.model.set_value(self._app.field_text(path))
                    field.model.add_end_edit_fn(lambda model, path=path: self._on_edit(path, model))
                    self._field_models[path] = field.model
                problems = self._app.field_problems(path)
                if problems:
                    ui.Label("\n".join(problems), word_wrap=True, style=PROBLEM_STYLE)

    # -- redraw --------------------------------------------------------------------------------------

    def _refresh(self, fields: bool = True) -> None:
        if self._window is None:
            return
        self._status.text = self._app.state.status
        self._messages.text = "\n".join(self._app.state.messages)
        if fields:
            self._fields_frame.rebuild()

    def _show_jobs(self) -> None:
        self._jobs.text = "\n".join(self._app.job_lines())
        running = [j for j in self._app.jobs.values() if j.progress is not None]
        done, total = running[-1].progress if running else (0, 1)
        self._progress.model.set_value(done / total)

    def _show_preview(self) -> None:
        image = self._app.preview_image()
        if image is not None:
            rgba, width, height = image
            self._preview_provider.set_bytes_data(list(rgba), [width, height])
            self._preview.width, self._preview.height = ui.Pixel(width), ui.Pixel(height)

    # -- callbacks: one call into the controller, then a redraw --------------------------------------

    def _toggle_window(self) -> None:
        self._window.visible = not self._window.visible

    def _on_open(self) -> None:
        self._app.open(self._path.model.get_value_as_string())
        self._refresh()

    def _on_save(self) -> None:
        self._app.save()
        self._refresh(fields=False)

    def _on_undo(self) -> None:
        self._app.undo()
        self._refresh()

    def _on_edit(self, path: str, model) -> None:
        self._app.edit(path, model.get_value_as_string())
        self._refresh()

    def _on_compile(self) -> None:
        stage = self._app.compile(self._seed.model.get_value_as_int())
        if stage is not None:
            omni.usd.get_context().open_stage(stage)
        self._refresh(fields=False)

    def _on_preview(self) -> None:
        self._app.start_preview(self._preview_seeds.model.get_value_as_string())
        self._refresh(fields=False)

    def _on_record_seeds(self) -> None:
        self._app.start_seeds(self._seed_count.model.get_value_as_int())
        self._refresh(fields=False)

    def _on_run(self) -> None:
        self._app.start_run(until=STAGES[self._until.model.get_item_value_model().as_int])
        self._refresh(fields=False)

    def _on_cancel(self, name: str) -> None:
        self._app.cancel(name)
        self._refresh(fields=False)

    def _on_open_report(self) -> None:
        self._app.open_report()
        self._refresh(fields=False)

    def _on_update(self, event) -> None:
        now = time.monotonic()
        if now - self._last_poll < POLL_S or not self._app.jobs:
            return
        self._last_poll = now
        if self._app.poll():
            self._show_preview()
            self._refresh(fields=False)
        self._show_jobs()
