"""A Replicator writer that writes worldgen's HDF5 layout (robomimic's, with Isaac Lab's attributes), for
teams that drive Replicator themselves on a worldgen stage (``rep.orchestrator.step()`` in their loop).

Written against the documented Isaac Sim 5.1 / omni.replicator.core 1.12 API and never run: Isaac Sim
cannot be installed on the development machines. Outside Isaac Sim importing it raises one sentence
saying so. Usage, inside Isaac Sim::

    writer = rep.WriterRegistry.get("WorldgenWriter")
    writer.initialize(output="demos.hdf5", manifest="scenarios/pick_cube.yaml")
    writer.attach([rep.create.render_product(camera_prim_path(m, "front"), (96, 96), name="front")])
    writer.begin_demo(seed, scene)            # then per control step: rep.orchestrator.step()
    writer.end_demo(actions, states, low_dim_obs, rewards, dones, success)   # T actions, T+1 frames
    ...
    writer.on_final_frame()                   # or rep.orchestrator.stop(): the file is finalized

Render products are named after the manifest's cameras (``name=``), so each frame's images land under
``obs/<camera>_rgb``, ``<camera>_depth``, ``<camera>_seg`` exactly as the Newton path writes them.
"""

from __future__ import annotations

try:
    import omni.replicator.core as rep
    from omni.replicator.core import AnnotatorRegistry, Writer, WriterRegistry
except ImportError:  # pragma: no cover - the branch taken everywhere but inside Isaac Sim
    raise ImportError(
        "worldgen.kit.replicator_writer runs inside Isaac Sim only (omni.replicator.core is not importable "
        "here); start Isaac Sim with `isaacsim --ext-folder exts --enable worldgen`, or a script under "
        "SimulationApp({'headless': True}) with Isaac Sim's python.sh"
    ) from None

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..dataset import DatasetWriter, dataset_header
from ..envs import camera_observation
from ..manifest import load_manifest, manifest_text
from ..pipeline import episode_demo
from ..scene import SceneSample
from ..sim.base import instance_table
from ..sim.isaac import replicator_frame

# worldgen output name -> Replicator annotator name
ANNOTATORS = {"rgb": "rgb", "depth": "distance_to_image_plane", "segmentation": "instance_segmentation"}


class WorldgenWriter(Writer):
    """Buffers each step's annotator outputs per camera; ``end_demo`` appends the episode as one demo."""

    def __init__(self, output: str, manifest: str):
        self.manifest = load_manifest(manifest)
        self.instances = instance_table(self.manifest)
        self.cameras = {c.name: c for c in self.manifest.cameras}
        self.data_structure = "renderProduct"  # data["renderProducts"][name][annotator]["data"]
        outputs = {o for c in self.manifest.cameras for o in c.outputs}
        self.annotators = [
            AnnotatorRegistry.get_annotator(ANNOTATORS[o], init_params={"colorize": False})
            if o == "segmentation"
            else AnnotatorRegistry.get_annotator(ANNOTATORS[o])
            for o in sorted(outputs)
        ]
        header = dataset_header(self.manifest, self.instances, manifest_text(self.manifest))
        self.dataset = DatasetWriter(Path(output), header)
        self._frames: list[dict[str, np.ndarray]] = []
        self._demo: tuple[int, SceneSample] | None = None

    def begin_demo(self, seed: int, scene: SceneSample) -> None:
        self._frames, self._demo = [], (seed, scene)

    def write(self, data: dict) -> None:
        if self._demo is None:
            return  # frames before begin_demo (warm-up renders) are not part of any demo
        frames = {}
        for name, product in data["renderProducts"].items():
            spec = self.cameras.get(name)
            if spec is None:
                raise ValueError(
                    f"render product {name!r}: name render products after the manifest's cameras "
                    f"({', '.join(self.cameras)}) with rep.create.render_product(..., name=CAMERA)"
                )
            outputs = {
                output: product[annotator] if output == "segmentation" else product[annotator]["data"]
                for output, annotator in ANNOTATORS.items()
                if output in spec.outputs and annotator in product
            }
            frames[name] = replicator_frame(spec, outputs, self.instances)
        seed, _ = self._demo
        self._frames.append(camera_observation(self.manifest, frames, seed, len(self._frames)))

    def end_demo(
        self,
        actions: np.ndarray,
        states: np.ndarray,
        low_dim_obs: Mapping[str, np.ndarray],
        rewards: np.ndarray,
        dones: np.ndarray,
        success: bool,
    ) -> str:
        """Append the buffered episode: T actions, states and rewards; T+1 low-dimensional observations
        and T+1 captured frames (one before each action and the last). Returns the demo's name."""
        if self._demo is None:
            raise RuntimeError("end_demo without begin_demo")
        rep.orchestrator.wait_until_complete()  # frames still on their way land in this demo
        seed, scene = self._demo
        if len(self._frames) != len(actions) + 1:
            raise ValueError(f"{len(self._frames)} captured frames for {len(actions)} actions; expected T+1")
        observations = [
            {**{k: np.asarray(v)[t] for k, v in low_dim_obs.items()}, **frame}
            for t, frame in enumerate(self._frames)
        ]
        attrs = {
            "seed": seed,
            "success": bool(success),
            "source": "sim",
            "sim_backend": "IsaacBackend",
            "scene": scene.to_dict(),
        }
        demo = episode_demo(observations, list(states), list(actions), list(actions), rewards, dones, attrs)
        name = f"demo_{seed - self.manifest.seeds.base_seed}"
        self.dataset.append(demo, name=name)
        self._frames, self._demo = [], None
        return name

    def on_final_frame(self) -> None:
        self.dataset.finalize()


WriterRegistry.register(WorldgenWriter)

__all__ = ["WorldgenWriter", "rep"]
