"""Simulation backends behind one protocol (Newton headless; Isaac Sim under Kit)."""
