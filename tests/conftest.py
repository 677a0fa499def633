"""Test configuration: fixture modules for each real peer live in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.isolation",
    "tests.fixtures.aws",
    "tests.fixtures.pypiserver",
    "tests.fixtures.aws_standins",
    "tests.fixtures.redis",
    "tests.fixtures.proxy",
    "tests.fixtures.registry",
    "tests.fixtures.npm",
    "tests.fixtures.secrets",
    "tests.fixtures.nginx",
    "tests.fixtures.fleet",
    "tests.fixtures.xdist_groups",
]
