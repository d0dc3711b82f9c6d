"""Checks of cleave's deployment files; the command line is ../check_manifests.py."""
