"""The target domain (manifest block, camera model, unlabelled clips) and appearance transfer, on
push_to_target and tiny training budgets: real Newton renders, real HDF5, a real diffusers U-Net."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from worldgen.dataset import (
    CLIP,
    DatasetError,
    DatasetWriter,
    demo_names,
    open_dataset,
    read_demo,
    read_header,
)
from worldgen.manifest import ManifestError, SensorSpec, parse_manifest
from worldgen.sensor import blur, gaussian_kernel, sensor_rgb

from .conftest import PUSH, ROOT


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from worldgen.pipeline import run_seed_stage

    path = tmp_path_factory.mktemp("domain") / "clips.hdf5"
    run_seed_stage(PUSH, path, n=1, domain="target", labels=False)
    return path


@pytest.fixture(scope="module")
def transfer_model(clips, tmp_path_factory):
    from world_models.transfer import TransferConfig, train_transfer

    ckpt = tmp_path_factory.mktemp("transfer") / "ckpt"
    model, meta = train_transfer(clips, ckpt, TransferConfig(steps=3, batch_size=2))
    return ckpt, model, meta


def test_target_domain_changes_appearance_not_the_episode(push):
    from worldgen.envs import WorldgenEnv
    from worldgen.scene import sample_scene

    target = push.in_domain("target")
    source_scene, target_scene = sample_scene(push, 7), sample_scene(target, 7)
    for a, b in zip(source_scene.objects, target_scene.objects, strict=True):
        assert (a.position, a.yaw, a.mass, a.friction) == (b.position, b.yaw, b.mass, b.friction)
    assert target_scene.objects[0].color == tuple(push.target_domain.object_colors["block"])
    assert target_scene.table_color == tuple(push.target_domain.table_color)
    assert all(c.sensor == push.target_domain.sensor for c in target.cameras)
    assert push.in_domain("source") is push

    renders = []
    for manifest in (target, target, push):
        env = WorldgenEnv(manifest)
        env.reset(seed=7)
        obs, *_ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        renders.append(obs)
        env.close()
    first, again, source = renders
    for key in first:
        assert np.array_equal(first[key], again[key]), f"{key}: the target domain renders from its seed"
    assert np.array_equal(first["front_seg"], source["front_seg"])
    assert np.array_equal(first["robot0_eef_pos"], source["robot0_eef_pos"])
    difference = np.abs(first["front_rgb"].astype(float) - source["front_rgb"]).mean()
    assert difference > 10.0, f"target RGB differs from source by only {difference:.1f} levels"
    depth_error = np.abs(first["front_depth"] - source["front_depth"])
    assert 0.0 < depth_error.max() < 0.02, "depth noise of a few millimetres, nothing more"


def test_sensor_model_against_its_parts():
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    assert np.array_equal(sensor_rgb(rgb, SensorSpec(), rng), rgb), "an ideal sensor changes nothing"
    flat = np.full((24, 32, 3), 100.0)
    assert np.allclose(blur(flat, 1.5), 100.0), "blur keeps a flat image"
    assert np.isclose(gaussian_kernel(0.8).sum(), 1.0)
    dark = sensor_rgb(np.full((24, 32, 3), 200, np.uint8), SensorSpec(vignetting=0.5), rng)
    assert dark[0, 0, 0] < 120 and dark[12, 16, 0] >= 199, "corners darkened, the centre kept"
    tinted = sensor_rgb(np.full((4, 4, 3), 100, np.uint8), SensorSpec(color_gain=(1.2, 1.0, 0.5)), rng)
    assert tuple(tinted[0, 0]) == (120, 100, 50)


def test_sensor_noise_is_drawn_per_scene_and_step(push):
    from worldgen.sensor import sensor_frame
    from worldgen.sim.base import CameraFrame

    camera = push.in_domain("target").cameras[0]
    frame = CameraFrame(rgb=np.full((96, 96, 3), 120, np.uint8), depth=np.full((96, 96, 1), 0.5, np.float32))
    step1, again, step2, other_scene = (
        sensor_frame(camera, frame, seed, step) for seed, step in ((3, 1), (3, 1), (3, 2), (4, 1))
    )
    assert np.array_equal(step1.rgb, again.rgb) and np.array_equal(step1.depth, again.depth)
    assert not np.array_equal(step1.rgb, step2.rgb), "noise drawn anew at every step"
    assert not np.array_equal(step1.rgb, other_scene.rgb), "and in every scene"
    assert not np.array_equal(step1.depth, step2.depth)


def test_scenes_stepped_together_see_the_target_domain_as_one_scene_does(push):
    from worldgen.envs import WorldgenEnv
    from worldgen.vector_env import WorldgenVectorEnv

    target = push.in_domain("target")
    single = WorldgenEnv(target)
    vector = WorldgenVectorEnv(target, num_envs=2, cameras=True)
    try:
        expected, _ = single.reset(seed=11)
        batch, _ = vector.reset(seed=[5, 11])
        assert np.array_equal(batch["front_rgb"][1], expected["front_rgb"])
        assert np.array_equal(batch["front_seg"][1], expected["front_seg"])
    finally:
        single.close()
        vector.close()


def test_target_domain_block_is_checked(tmp_path):
    text = PUSH.read_text().replace("object_colors: {block:", "object_colors: {brick:")
    with pytest.raises(ManifestError, match="brick"):
        parse_manifest(text, file="m.yaml")
    with pytest.raises(ValueError, match="no target_domain"):
        parse_manifest((ROOT / "scenarios" / "pick_cube.yaml").read_text()).in_domain("target")


def test_unlabelled_clips_hold_images_alone(clips, tmp_path):
    from worldgen.dataset import DatasetReader
    from worldgen.export import export
    from worldgen.pipeline import run_seed_stage

    with open_dataset(clips) as f:
        (name,) = demo_names(f)
        group = f["data"][name]
        assert "actions" not in group and "states" not in group and "rewards" not in group
        images = [f"{c}_{k}" for c in ("front", "side") for k in ("depth", "rgb", "seg")]
        assert sorted(group["obs"]) == images
        assert group.attrs["source"] == CLIP and "success" not in group.attrs
        assert all(len(f[f"mask/{m}"]) == 0 for m in f["mask"]), "a clip is in no mask"
        demo = read_demo(group)
        assert demo.actions is None and demo.num_samples + 1 == len(demo.obs["front_rgb"])
    before = clips.read_bytes()
    run_seed_stage(PUSH, clips, n=1, domain="target", labels=False)  # resumed: nothing to do
    assert clips.read_bytes() == before
    with DatasetReader(clips) as reader:
        summary = reader.summary()
    assert summary["action_dim"] == 0 and summary["sources"] == [CLIP]
    with pytest.raises(DatasetError, match="unlabelled clip"):
        export(clips, tmp_path / "out.hdf5", "robomimic")
    with pytest.raises(DatasetError, match="written for manifest"):  # nor source frames a target file
        run_seed_stage(PUSH, clips, n=1, domain="source", labels=False)


def test_transfer_model_saves_and_reloads(transfer_model):
    import torch

    from world_models.transfer import load_transfer_model

    ckpt, model, meta = transfer_model
    assert (ckpt / "model" / "diffusion_pytorch_model.safetensors").is_file()
    loaded, loaded_meta = load_transfer_model(ckpt)
    assert loaded_meta == meta and meta.cameras == ("front", "side")
    depth = torch.rand(2, 96, 96, generator=torch.Generator().manual_seed(0))
    seg = torch.randint(0, len(meta.instances), (2, 96, 96), generator=torch.Generator().manual_seed(1))
    previous = torch.zeros(2, 3, 96, 96)
    with torch.no_grad():
        a = model(model.controls(depth, seg), previous, torch.tensor([False, True]))
        b = loaded(loaded.controls(depth, seg), previous, torch.tensor([False, True]))
    assert torch.equal(a, b)


def test_transferred_demos_keep_every_array_but_rgb(seeds, transfer_model, tmp_path):
    import torch

    from world_models.transfer import TRANSFERRED, transfer_checkpoint_hash, transfer_dataset

    ckpt = transfer_model[0]
    out, again = tmp_path / "transferred.hdf5", tmp_path / "again.hdf5"
    transfer_dataset(seeds, ckpt, out)
    transfer_dataset(seeds, ckpt, again)
    assert torch.is_grad_enabled(), "applying the model leaves training possible in this process"
    with open_dataset(out) as f:
        header = read_header(f)
    header["worldgen"]["transfer_model"] = "another checkpoint"
    with pytest.raises(DatasetError, match="transfer_model"):  # one file, one painter
        DatasetWriter(out, header)

    def arrays(group: h5py.Group) -> dict[str, np.ndarray]:
        found = {}
        group.visititems(lambda k, v: found.__setitem__(k, v[()]) if isinstance(v, h5py.Dataset) else None)
        return found

    with open_dataset(seeds) as f, open_dataset(out) as g, open_dataset(again) as h:
        assert demo_names(f) == demo_names(g)
        for name in demo_names(f):
            original, copied, repeated = (arrays(x["data"][name]) for x in (f, g, h))
            assert original.keys() == copied.keys()
            for key, value in original.items():
                if key.endswith("_rgb"):
                    assert not np.array_equal(value, copied[key]), f"{key} was not repainted"
                    assert np.array_equal(copied[key], repeated[key]), "transfer regenerates bit for bit"
                else:
                    assert np.array_equal(value, copied[key]), f"{key} changed"
            attrs = g["data"][name].attrs
            assert attrs["domain"] == TRANSFERRED
            assert attrs["transfer_model"] == transfer_checkpoint_hash(ckpt)
            assert attrs["source"] == f["data"][name].attrs["source"]
            assert list(g["mask/train"]) == list(f["mask/train"])


def test_cli_refuses_what_it_cannot_do_in_one_line(seeds, tmp_path, capsys):
    from worldgen.apps.cli import main

    pick = ROOT / "scenarios" / "pick_cube.yaml"
    errors = []
    for argv in (
        ["seed", str(pick), "-o", str(tmp_path / "c.hdf5"), "--domain", "target", "--no-actions"],
        ["eval", str(tmp_path), str(pick), "--domain", "target"],
        ["transfer", str(seeds), str(tmp_path), "-o", str(tmp_path / "t.hdf5")],  # not a checkpoint
        ["seed", str(PUSH), "-o", str(tmp_path / "c.hdf5"), "--no-actions", "--no-cameras"],
    ):
        code = main(argv)
        errors.append(capsys.readouterr().err.strip())
        assert code == 2 and len(errors[-1].splitlines()) == 1, (argv, errors[-1])
    assert "target_domain" in errors[0] and "target_domain" in errors[1]
    assert "not a transfer checkpoint" in errors[2] and "--no-cameras" in errors[3]
    assert not (tmp_path / "c.hdf5").exists() and not (tmp_path / "t.hdf5").exists()


def test_sampled_transfer_is_seeded(seeds, clips, transfer_model):
    from worldgen.dataset import read_obs

    from world_models.transfer import residual_std, transfer_frames

    model = transfer_model[1]
    noise = residual_std(model, clips, frames=8)
    assert noise.shape == (3,) and (noise > 0).all()
    with open_dataset(seeds) as f:
        obs = read_obs(f["data"]["demo_0"], ["front_depth", "front_seg"])
    depth, seg = obs["front_depth"][:4], obs["front_seg"][:4]
    first = transfer_frames(model, depth, seg, noise, np.random.default_rng(1))
    again = transfer_frames(model, depth, seg, noise, np.random.default_rng(1))
    assert np.array_equal(first, again), "a sampled transfer regenerates from its seed"
    assert not np.array_equal(first, transfer_frames(model, depth, seg)), "and is not the mean frame"


def test_transfer_repaints_only_the_cameras_asked(seeds, transfer_model, tmp_path):
    """World-model demos hold only the camera the model imagines: transfer repaints the cameras named."""
    from world_models.transfer import transfer_dataset

    out = tmp_path / "front_only.hdf5"
    transfer_dataset(seeds, transfer_model[0], out, cameras=["front"])
    with open_dataset(seeds) as f, open_dataset(out) as g:
        name = demo_names(f)[0]
        original, copied = f["data"][name]["obs"], g["data"][name]["obs"]
        assert not np.array_equal(original["front_rgb"][()], copied["front_rgb"][()])
        assert np.array_equal(original["side_rgb"][()], copied["side_rgb"][()])
    with pytest.raises(DatasetError, match="repaints cameras"):
        transfer_dataset(seeds, transfer_model[0], tmp_path / "x.hdf5", cameras=["wrist"])
