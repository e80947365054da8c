"""gpucloud: a self-hostable GPU cloud marketplace speaking the Fluence GPU Cloud API."""

__version__ = "0.1.0"
