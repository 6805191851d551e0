"""Ballots from RabbitMQ: `cardinal ingest` (issue 16).

queues.py     the ingest queue, its dead-letter exchange and its refused queue
messages.py   a message as ballots: parsing and validation, each with its idempotency key
consumer.py   the consumer: batches cast through the group-commit writer, acked after commit
publisher.py  publishing ballots with publisher confirms (smoke test, benchmark, tests)
"""
