"""Everything that talks to PostgreSQL: schema, connections, the embedded server, the store."""
