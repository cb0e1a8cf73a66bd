pytest_plugins = ["singleton.testing.pytest_plugin"]
