"""Kit's own tests of the window (omni.kit.test, run by Kit's test runner from extension.toml's [[test]]).
Written against the Kit 107 API and never run here: pytest does not collect this folder."""

from .test_window import *  # noqa: F403 - Kit's runner discovers test cases in this package
