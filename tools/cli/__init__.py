"""The ``kdcache`` command (``main.py``): each command module defines its parser from the
config dataclasses and imports the heavy parts (torch, timm, Ray) only when the command runs."""
