//! sluice: a PostgreSQL connection-limiting proxy.
