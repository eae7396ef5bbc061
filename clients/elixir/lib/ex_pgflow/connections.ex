defmodule ExPgflow.Connections do
  @moduledoc """
  The connections `ExPgflow` sends and administers on: one `Pgflow.Connection` per server,
  started on first use under pgflow's own application and kept (reconnecting) from then on.
  The seeds' applications start no connection of their own, so `ExPgflow.publish/3` finds one
  here.
  """

  @doc "The shared connection to `connect` (anything `Pgflow.connect/1` takes), started if need be."
  @spec get(term()) :: {:ok, Pgflow.conn() | GenServer.name()}
  def get(connect) do
    # Registered by a digest: a name holding the password would show in crash reports.
    key = :crypto.hash(:sha256, :erlang.term_to_binary(connect))
    name = {:via, Registry, {ExPgflow.Registry, key}}

    case Registry.lookup(ExPgflow.Registry, key) do
      [_] ->
        {:ok, name}

      [] ->
        case DynamicSupervisor.start_child(
               __MODULE__,
               {Pgflow.Connection, connect: connect, name: name}
             ) do
          {:ok, _} -> {:ok, name}
          {:error, {:already_started, _}} -> {:ok, name}
        end
    end
  end
end
