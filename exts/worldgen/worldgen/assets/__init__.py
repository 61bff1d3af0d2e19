"""Procedural robot assets authored in USD from published kinematics (no downloaded meshes)."""
