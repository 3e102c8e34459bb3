"""Django's PostgreSQL backend with a connection pool that fails fast while the
database is away (see base.py); set as ENGINE by supportbot.settings."""
