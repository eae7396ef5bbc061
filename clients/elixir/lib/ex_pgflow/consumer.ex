defmodule ExPgflow.Consumer do
  @moduledoc """
  The seeds' consumers as a child of the application's tree, as seed 003 writes it:

      children = [{ExPgflow.Consumer, Application.get_env(:singularity, :pgflow_consumers)}]

  The argument is one of:

    * `nil`: what seed 003's line passes, since its configuration sets `:pgflow_queues`, not
      `:pgflow_consumers`: the configuration `config app, :pgflow_queues` of the application
      whose tree starts the consumer (`:application.get_application/0` of the starting
      process);
    * a configuration (`database_url`, `producers`, `consumers`, ...: `Pgflow.Config`);
    * a list of consumer entries (`[{name, %{queue_name: ..., handler: ...}}, ...]`), with the
      server and the other keys of the application's `:pgflow_queues`;
    * one consumer's options (`queue_name:`, `handler:`, ... with seed 004's `batch_size`,
      `max_parallel_workers`, `poll_interval_ms`, ...: `Pgflow.Consumer`).

  It is a `Pgflow.Supervisor` without a shared connection (`ExPgflow` keeps its own,
  `ExPgflow.Connections`), whose consumers default to `deliver: :payload` (handlers get the
  payload as the seeds read it: `message.proposal_id`, `message["votes"]`; give
  `deliver: :message` for the `%Pgflow.Message{}`) and to `missing_queue: :wait` (the
  application starts when a queue is missing; a warning names it and the workers retry until
  it exists). An entry that cannot start (a handler of the wrong shape, an unknown key, seed
  000's consumer entries that name no handler) is refused here, with an `ArgumentError` that
  names it.
  """

  require Logger

  # Consumer options for every entry, below the configuration's own.
  @defaults [deliver: :payload, missing_queue: :wait]

  @doc "A supervisor child spec for `config` (see the module doc)."
  def child_spec(config) do
    %{id: __MODULE__, start: {__MODULE__, :start_link, [resolve(config)]}, type: :supervisor}
  end

  @doc false
  def start_link(config), do: Pgflow.Supervisor.start_link(config)

  @doc """
  The configuration the argument stands for, as the keyword list `Pgflow.Supervisor` takes,
  checked by `Pgflow.Config.parse/1` (an `ArgumentError` names a bad entry).
  """
  @spec resolve(nil | keyword() | map() | list()) :: keyword()
  def resolve(arg) do
    config = Keyword.merge(@defaults ++ [name: nil], arg |> config() |> Enum.to_list())

    if Pgflow.Config.parse(config).consumers == [] do
      Logger.warning("ExPgflow.Consumer: the configuration has no consumers; nothing to consume")
    end

    config
  end

  defp config(nil), do: app_config!("got nil")
  defp config(arg) when is_map(arg), do: config(Map.to_list(arg))

  defp config(arg) when is_list(arg) do
    cond do
      arg != [] and Enum.all?(arg, &entry?/1) ->
        app_config!("got a list of consumer entries")
        |> Enum.to_list()
        |> Keyword.put(:consumers, arg)

      Keyword.has_key?(arg, :queue_name) or Keyword.has_key?(arg, :queue) ->
        [consumers: [{arg[:name] || arg[:queue_name] || arg[:queue], arg}]]

      true ->
        arg
    end
  end

  defp entry?({key, opts}) when is_atom(key) and is_map(opts), do: true
  defp entry?({key, url, opts}) when is_atom(key) and is_binary(url) and is_list(opts), do: true
  defp entry?(_), do: false

  defp app_config!(what) do
    case :application.get_application() do
      {:ok, app} ->
        Application.get_env(app, :pgflow_queues) ||
          raise ArgumentError,
                "ExPgflow.Consumer #{what}, and the application #{inspect(app)} has no " <>
                  "`config #{inspect(app)}, :pgflow_queues, database_url: ..., consumers: [...]`"

      :undefined ->
        raise ArgumentError,
              "ExPgflow.Consumer #{what} outside an application: pass the configuration"
    end
  end
end
