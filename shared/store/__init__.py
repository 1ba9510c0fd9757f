"""PostgreSQL, the source of truth: the connection pool, the SQL of each table, and the
alembic migrations that create them."""
