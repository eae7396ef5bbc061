# Seed 004's Genesis configuration (config/config.exs), as written.
import Config

config :genesis, :pgflow_consumer,
  enabled: true,                        # ✅ ENABLED
  poll_interval_ms: 1000,               # Poll every 1 second
  batch_size: 10,                       # Process 10 workflows per batch
  timeout_ms: 30000,                    # 30-second timeout per workflow
  enable_parallel_processing: true,     # ✅ PARALLEL ENABLED
  max_parallel_workers: 4,              # Process up to 4 workflows concurrently
  repo: Genesis.Repo

# Not in seed 004, which shows no repo configuration: an Ecto repo's usual keys, which pgflow
# reads for `repo: Genesis.Repo` (it connects on its own; there is no Ecto here).
config :genesis, Genesis.Repo, url: System.get_env("PGFLOW_DATABASE_URL")
