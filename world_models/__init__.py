"""Action-conditioned video world models built on diffusers (README: World model)."""
