"""Hydra configs of every stage (package data of an installed intentrec)."""
