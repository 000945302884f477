"""Shared infrastructure for the task packages: configs, distributed helpers, checkpoints, logging, EMA."""
