"""Cardinal Vote's pure domain model: elections, ballots, votes and their tabulation.

Nothing in this package performs I/O or imports infrastructure (psycopg, aio-pika,
starlette, pydantic, or the api/infra/projections packages); a unit test keeps it so.
"""
