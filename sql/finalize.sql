-------------------------------------------------------------------------------------------------
-- Last: ask the launcher for this database's worker once CREATE EXTENSION commits (a no-op
-- when pgflow is not in shared_preload_libraries).
-------------------------------------------------------------------------------------------------
SELECT pgflow._worker_wake();
