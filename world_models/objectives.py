"""How a backbone turns noise into the next frame: its training loss and its sampler, on diffusers'
schedulers.

- ``edm_residual`` (the ``unet`` backbone): EDM (Karras et al. 2022) on the *residual* from the last
  context frame, with EDM preconditioning and Euler sampling from ``EDMEulerScheduler``; the noise
  levels are scaled to the measured std of the frame-to-frame change (``sigma_data``).
- ``rectified_flow`` (the ``cosmos`` backbone): the parameterisation Cosmos-Predict2 was trained with.
  The noisy input is ``(1 - t) x0 + t eps``, the timestep is ``t`` in [0, 1] and the network predicts the
  velocity ``eps - x0`` of the *whole* next frame (Predict2's ``c_in = 1 - t, c_out = -t`` preconditioning
  written in flow space); sampling is Euler on ``FlowMatchEulerDiscreteScheduler``. A pretrained
  Video2World transformer sees what it was trained on, so post-training starts from what it knows.

Both share the rest of :func:`world_model_loss`: context-noise augmentation and the next-state head.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from diffusers import EDMEulerScheduler, FlowMatchEulerDiscreteScheduler
from worldgen.data_parallel import DataParallel

from .data import Normalization

# Training noise levels: ln(sigma / sigma_data) ~ N(mean, std). The sampler makes its prediction from
# pure noise at sigma_max = 20 sigma_data, so training is centred there and above (sigma ~ 33 sigma_data),
# where the residual is hidden and the network must predict it from the context and the actions. EDM's
# image default (mean ln 0.6, i.e. P_mean -1.2 at sigma_data 0.5) spends most samples denoising
# half-visible residuals, which this sampler never asks for. Open-loop PSNR over copy-last 8 steps ahead
# on push_to_target (56 seeds, 1600 CPU steps) for means -0.5 / 1.0 / 1.7 / 2.5 / 3.5: +1.1 / +3.9 /
# +5.3 / +6.0 / +6.5 dB; action-sensitivity gap +0.2 / +2.3 / +3.6 / +4.3 / +4.8 dB.
TRAIN_LOG_SIGMA_MEAN, TRAIN_LOG_SIGMA_STD = 3.5, 1.2
EDM_IMAGE_LOG_SIGMA = (-1.2 - math.log(0.5), 1.2)  # what checkpoints from before the choice trained with
CONTEXT_NOISE_MAX = 4.0  # in units of the frame-to-frame change
# One Euler step from sigma_max: trained as above, the model's prediction there is the frame; on
# push_to_target (1600 steps) a second step at sigma_min cost 0.3 dB 8 steps ahead and a third (through
# sigma ~ 2 sigma_data, where it is rarely trained) 4.3 dB.
EDM_SAMPLING_STEPS = 1
# A whole frame from pure noise takes more steps than a small residual (Predict2 samples with 35); not
# measured here with pretrained weights, which cannot be downloaded on these machines.
FLOW_SAMPLING_STEPS = 8

Draw = Callable[..., torch.Tensor]


class Objective(Protocol):
    name: str
    sampling_steps: int
    context_noise_unit: float

    def config(self) -> dict: ...

    def noise_target(self, next_frame: torch.Tensor, last: torch.Tensor, randn: Draw) -> dict: ...

    def frame_loss(self, model, noised: dict, context, actions, state, level) -> torch.Tensor: ...

    def sample(self, model, window, actions, states, noise: torch.Tensor) -> torch.Tensor: ...


class EDMResidual:
    name = "edm_residual"

    def __init__(
        self,
        sigma_data: float = 0.5,
        sampling_steps: int = EDM_SAMPLING_STEPS,
        train_log_sigma: tuple[float, float] | None = None,
    ):
        self.sigma_data, self.sampling_steps = sigma_data, sampling_steps
        self.train_log_sigma = tuple(train_log_sigma or (TRAIN_LOG_SIGMA_MEAN, TRAIN_LOG_SIGMA_STD))
        self.context_noise_unit = sigma_data
        # The residual has a std of a few hundredths in [-1, 1] units; EDM's image defaults (sigma_data 0.5,
        # sigma_max 80) would spend nearly every training sample and sampling step drowning it.
        self.scheduler = EDMEulerScheduler(
            sigma_min=0.002, sigma_max=20.0 * sigma_data, sigma_data=sigma_data
        )

    def config(self) -> dict:
        return {
            "objective": self.name,
            "sigma_data": self.sigma_data,
            "sampling_steps": self.sampling_steps,
            "train_log_sigma": list(self.train_log_sigma),
        }

    def noise_target(self, next_frame, last, randn):
        residual = next_frame - last
        mean, std = self.train_log_sigma
        s = self.sigma_data * torch.exp(mean + std * randn(residual.shape[0])).view(-1, 1, 1, 1)
        return {"target": residual, "sigma": s, "noisy": residual + s * randn(*residual.shape)}

    def frame_loss(self, model, noised, context, actions, state, level):
        sch, s, noisy = self.scheduler, noised["sigma"], noised["noisy"]
        out = model.denoise_next_frame(
            sch.precondition_inputs(noisy, s),
            sch.precondition_noise(s.flatten()),
            context,
            actions,
            state,
            context_noise=level,
        )
        denoised = sch.precondition_outputs(noisy, out, s)
        weight = (s**2 + self.sigma_data**2) / (s * self.sigma_data) ** 2
        return (weight * (denoised - noised["target"]) ** 2).mean()

    def sample(self, model, window, actions, states, noise):
        sch, n = self.scheduler, window.shape[0]
        sch.set_timesteps(self.sampling_steps, device=window.device)
        # sigma_max, not the scheduler's init_noise_sigma: that is sqrt(sigma_max^2 + 1), which assumes data
        # of unit std and is 1.6x too loud for this residual's sigma_max of 0.8 (0.8 dB lost at every step
        # ahead on push_to_target).
        x = noise * sch.sigmas[0].to(noise.device, noise.dtype)
        for t in sch.timesteps:
            out = model.denoise_next_frame(sch.scale_model_input(x, t), t.expand(n), window, actions, states)
            x = sch.step(out, t, x).prev_sample
        return window[:, -1] + x


class RectifiedFlow:
    name = "rectified_flow"

    def __init__(self, context_noise_unit: float = 0.05, sampling_steps: int = FLOW_SAMPLING_STEPS):
        self.context_noise_unit, self.sampling_steps = context_noise_unit, sampling_steps
        self.scheduler = FlowMatchEulerDiscreteScheduler()

    def config(self) -> dict:
        return {
            "objective": self.name,
            "context_noise_unit": self.context_noise_unit,
            "sampling_steps": self.sampling_steps,
        }

    def noise_target(self, next_frame, last, randn):
        # Logit-normal t (as SD3 trains rectified flows): most samples at mid noise, where the task is hard.
        t = torch.sigmoid(randn(next_frame.shape[0])).view(-1, 1, 1, 1)
        noise = randn(*next_frame.shape)
        return {"t": t, "noisy": (1.0 - t) * next_frame + t * noise, "velocity": noise - next_frame}

    def frame_loss(self, model, noised, context, actions, state, level):
        t = noised["t"].flatten()
        velocity = model.denoise_next_frame(noised["noisy"], t, context, actions, state, context_noise=level)
        return ((velocity - noised["velocity"]) ** 2).mean()

    def sample(self, model, window, actions, states, noise):
        sch, n = self.scheduler, window.shape[0]
        sch.set_timesteps(self.sampling_steps, device=window.device)
        x = noise
        for i, t in enumerate(sch.timesteps):
            sigma = sch.sigmas[i].to(x.device, x.dtype).expand(n)  # the flow time t in [0, 1]
            velocity = model.denoise_next_frame(x, sigma, window, actions, states)
            x = sch.step(velocity, t, x).prev_sample
        return x


BACKBONE_OBJECTIVE = {"unet": "edm_residual", "cosmos": "rectified_flow"}


def objective_for(backbone: str, frame_change_std: float) -> Objective:
    """A backbone's objective, scaled to the measured std of the frame-to-frame change."""
    if BACKBONE_OBJECTIVE[backbone] == "rectified_flow":
        return RectifiedFlow(context_noise_unit=frame_change_std)
    return EDMResidual(sigma_data=frame_change_std)


def objective_from_config(config: dict) -> Objective:
    """The objective a checkpoint's ``worldgen.json`` records under ``scheduler`` (EDM when it names none:
    checkpoints from before the choice existed)."""
    if config.get("objective", "edm_residual") == "rectified_flow":
        return RectifiedFlow(config["context_noise_unit"], config["sampling_steps"])
    return EDMResidual(
        config["sigma_data"], config["sampling_steps"], config.get("train_log_sigma", EDM_IMAGE_LOG_SIGMA)
    )


def world_model_loss(
    model,
    objective: Objective,
    batch: dict,
    generator: torch.Generator,
    norm: Normalization,
    parallel: DataParallel | None = None,
    known_columns: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame loss, state loss) of one batch: the objective's denoising loss for the next frame, and the
    state head's :func:`state_rollout_loss`. Noise is drawn with ``generator`` on its own device (on the GPU,
    drawing on the host would starve it) and moved to the model's device with the batch. ``parallel``
    (data-parallel ranks): ``batch`` is the global batch and every draw is made for the global batch, of
    which this rank keeps its share, so the ranks' losses average to the one-process loss."""
    world = 1 if parallel is None else parallel.world

    def share(x: torch.Tensor) -> torch.Tensor:
        return x if parallel is None else parallel.share(x)

    device = next(model.parameters()).device
    # Each rank divides its rollout errors by its share of the global batch's valid steps, so the ranks'
    # losses average to the one-process loss although their own counts differ.
    valid_steps = (batch["rollout_valid"].sum() / world).to(device)
    batch = {key: share(value).to(device) for key, value in batch.items()}
    b = batch["next_frame"].shape[0]

    # Every draw's first dimension is this rank's batch: drawn for all ranks' batches, then shared.
    def randn(*shape: int) -> torch.Tensor:
        drawn = torch.randn((shape[0] * world, *shape[1:]), generator=generator, device=generator.device)
        return share(drawn).to(device)

    def rand(*shape: int) -> torch.Tensor:
        drawn = torch.rand((shape[0] * world, *shape[1:]), generator=generator, device=generator.device)
        return share(drawn).to(device)

    state, actions = norm.normalize(batch["state"]), norm.normalize_actions(batch["actions"])
    noised = objective.noise_target(batch["next_frame"], batch["context"][:, -1], randn)
    # Context-noise augmentation (as GameNGen): half the samples see context frames corrupted by noise of
    # a known level, so the model cannot lean on exact past frames alone: it learns to read the motion
    # from the actions and to recover from its own imperfect frames in autoregressive rollouts.
    level = CONTEXT_NOISE_MAX * rand(b)
    level = level * (rand(b) < 0.5)
    unit = objective.context_noise_unit
    context = batch["context"] + (level * unit).view(-1, 1, 1, 1, 1) * randn(*batch["context"].shape)
    frame_loss = objective.frame_loss(model, noised, context, actions, state, level)
    return frame_loss, state_rollout_loss(model, batch, norm, known_columns, valid_steps)


def state_rollout_loss(
    model,
    batch: dict,
    norm: Normalization,
    known_columns: int = 0,
    valid_steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE of the normalised state along the batch's rollouts, the state head fed its own predictions
    (as it is in generation), its first ``known_columns`` (the end effector, which generation takes from
    the arm controller) re-read from the data each step. Trained one step at a time the head drifts
    several centimetres over an episode; on its own outputs it learns to stay on the data. The summed
    error is divided by ``valid_steps`` (default: the batch's own count of steps inside an episode)."""
    actions = norm.normalize_actions(batch["rollout_actions"])
    targets, valid = norm.normalize(batch["rollout_states"]), batch["rollout_valid"].to(actions.dtype)
    state, total = targets[:, 0], actions.new_zeros(())
    for h in range(actions.shape[1]):
        state = state + model.predict_state_delta(actions[:, h], state)
        total = total + (((state - targets[:, h + 1]) ** 2).mean(1) * valid[:, h]).sum()
        state = torch.cat([targets[:, h + 1, :known_columns], state[:, known_columns:]], 1)
    return total / (valid.sum() if valid_steps is None else valid_steps)
