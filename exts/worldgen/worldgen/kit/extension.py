"""omni.ext entry point and window, written against the Isaac Sim 5.1 / Kit 107 API. Never run here:
Kit cannot be installed on the development machines. Callbacks are one-line calls into WorldgenApp."""

from __future__ import annotations

import omni.ext
import omni.ui as ui
import omni.usd

from ..apps.window import WorldgenApp


class WorldgenExtension(omni.ext.IExt):
    def on_startup(self, ext_id: str) -> None:
        self._app = WorldgenApp()
        self._window = ui.Window("worldgen", width=420, height=260)
        with self._window.frame, ui.VStack(spacing=4):
            ui.Label("Scenario manifest")
            self._path = ui.StringField()
            self._path.model.set_value(self._app.state.manifest_path)
            with ui.HStack(height=22):
                ui.Label("Seed", width=40)
                self._seed = ui.IntField()
            with ui.HStack(height=26):
                ui.Button("Validate", clicked_fn=self._on_validate)
                ui.Button("Compile and open", clicked_fn=self._on_compile)
            self._status = ui.Label("", word_wrap=True)

    def _sync(self) -> None:
        self._app.state.manifest_path = self._path.model.get_value_as_string()
        self._app.state.seed = self._seed.model.get_value_as_int()

    def _show(self) -> None:
        self._status.text = "\n".join([self._app.state.status, *self._app.state.errors])

    def _on_validate(self) -> None:
        self._sync()
        self._app.validate()
        self._show()

    def _on_compile(self) -> None:
        self._sync()
        path = self._app.compile()
        if path is not None:
            omni.usd.get_context().open_stage(path)
        self._show()

    def on_shutdown(self) -> None:
        self._window = None
