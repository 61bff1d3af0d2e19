"""Action-conditioned video world models built on diffusers (see DESIGN.md, "World model")."""
