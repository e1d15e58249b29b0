"""Root conftest: load the fixture modules every test directory shares."""

pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.llm",
    "tests.fixtures.nats_cluster",
    "tests.fixtures.pgvector",
    "tests.fixtures.services",
]
