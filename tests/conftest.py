"""Shared pytest fixtures. Each area keeps its fixtures in its own plugin module."""

pytest_plugins = ["tests._hub_fixtures", "tests._model_fixtures"]
