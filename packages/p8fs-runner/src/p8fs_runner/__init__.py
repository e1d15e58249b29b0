"""p8fs-runner: NATS JetStream tiers, router, workers and the SeaweedFS event bridge."""

__version__ = "0.1.0"
