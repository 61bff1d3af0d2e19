"""Behaviour cloning and RL policies trained on worldgen datasets (see DESIGN.md, "Policies")."""
