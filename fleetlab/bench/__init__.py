"""Simulation benchmark: surfaces (the simulated truth a `sim:` fleet evaluates) and the harness behind `fleetlab bench`."""

from fleetlab.bench.surfaces import SURFACES, Surface, load_surface

__all__ = ["SURFACES", "Surface", "load_surface"]
