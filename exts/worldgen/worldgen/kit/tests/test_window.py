"""The window inside a running Kit: it opens, loads the default scenario and compiles a stage."""

import omni.kit.app
import omni.kit.test
import omni.usd


class TestWorldgenWindow(omni.kit.test.AsyncTestCase):
    async def test_window_is_registered_and_visible(self):
        import omni.ui as ui

        await omni.kit.app.get_app().next_update_async()
        window = ui.Workspace.get_window("worldgen")
        self.assertIsNotNone(window)
        self.assertTrue(window.visible)

    async def test_compiled_stage_opens_in_the_usd_context(self):
        import tempfile
        from pathlib import Path

        from ...apps.window import AppState, WorldgenApp

        root = omni.kit.app.get_app().get_extension_manager().get_extension_path_by_module(__name__)
        app = WorldgenApp(AppState(output_dir=tempfile.mkdtemp()))
        self.assertTrue(app.open(Path(root) / "worldgen" / "scenarios" / "pick_cube.yaml"))
        stage = app.compile(seed=1)
        self.assertIsNotNone(stage)
        ok, _ = await omni.usd.get_context().open_stage_async(stage)
        self.assertTrue(ok)
        self.assertTrue(omni.usd.get_context().get_stage().GetPrimAtPath("/World/Robot").IsValid())
