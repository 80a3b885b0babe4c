"""The emulated lab: its guest images (built once, cached) and the local daemons.

Rule: only the emulated lab needs this; a real host never calls it.
"""
