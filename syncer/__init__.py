"""syncer keeps an SQL inventory and audit trail of the files stored at LLM providers."""
