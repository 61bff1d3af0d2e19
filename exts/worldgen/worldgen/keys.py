"""The names datasets, observations and environments are keyed by, in one place. Observation names
follow robomimic / Isaac Lab (``robot0_eef_pos`` ...); a camera's images are ``<camera>_rgb``,
``<camera>_depth`` and ``<camera>_seg``."""

from __future__ import annotations

# Low-dimensional observations.
EEF_POS = "robot0_eef_pos"
EEF_QUAT = "robot0_eef_quat"
JOINT_POS = "robot0_joint_pos"
GRIPPER_QPOS = "robot0_gripper_qpos"
OBJECT = "object"  # per tracked object: position, quaternion, position relative to the end effector

# A camera's images.
RGB, DEPTH, SEG = "rgb", "depth", "seg"
IMAGE_KINDS = (RGB, DEPTH, SEG)

# Per-step arrays of a demo beside robomimic's actions / states / rewards / dones.
EXECUTED_ACTIONS = "executed_actions"  # what was executed where the labels differ (recovery demos)


def image_key(camera: str, kind: str) -> str:
    """The observation key of one of a camera's images, e.g. ``front_rgb``."""
    return f"{camera}_{kind}"


def image_kind(key: str) -> str | None:
    """``rgb``, ``depth`` or ``seg`` for a camera image key, None for any other key."""
    kind = key.rsplit("_", 1)[-1]
    return kind if "_" in key and kind in IMAGE_KINDS else None


def image_camera(key: str) -> str:
    """The camera of a camera image key (``front_rgb`` -> ``front``)."""
    return key.rsplit("_", 1)[0]
