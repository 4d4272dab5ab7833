"""What the tests share: services and fixtures (a pytest plugin, named in tests/conftest.py),
jobs run as a user runs them, readers of their outputs, oracles and input factories.

Modules here never import a conftest: fixtures come in through `pytest_plugins`."""
