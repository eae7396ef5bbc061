defmodule Pgflow.Application do
  @moduledoc false
  # What pgflow runs on its own: the shared connections of `ExPgflow` (`ExPgflow.Connections`),
  # one per server, started on first use and registered by a digest of their connection
  # options.
  use Application

  @impl true
  def start(_type, _args) do
    children = [
      {Registry, keys: :unique, name: ExPgflow.Registry},
      {DynamicSupervisor, name: ExPgflow.Connections, strategy: :one_for_one}
    ]

    Supervisor.start_link(children, strategy: :rest_for_one, name: Pgflow.Application)
  end
end
