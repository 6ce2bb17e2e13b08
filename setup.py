from setuptools import setup

# pyproject.toml holds the metadata; this shim serves tools that still look for setup.py
setup()
