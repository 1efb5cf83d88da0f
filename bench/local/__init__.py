"""Run the Kafka broker and Triton server that ship inside PyPI wheels, on loopback.

Used by ``modstream demo``, ``modstream bench`` and the integration tests. Production
points the consumer at real Kafka and Triton through settings instead.
"""
