"""The ground floor: what every other layer may use — errors, units, devices, settings, the model
directory, adapter inspection and the version. Imports nothing of the project."""

__version__ = "0.1.0"
