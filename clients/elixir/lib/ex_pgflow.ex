defmodule ExPgflow do
  @moduledoc """
  The calls of the seeds (the users' design documents: 000 the integration guide, 003 the
  configuration guide, 004 Genesis's settings), with their names, arities and return shapes, on
  top of `Pgflow`:

      # seed 000: producers send to a queue; the application names its configuration
      {:ok, message_id} = ExPgflow.publish(:singularity, "proposals_for_consensus_queue", message)

      # seed 003: consumers in the application's tree
      children = [{ExPgflow.Consumer, Application.get_env(:singularity, :pgflow_consumers)}]

      # seed 003: monitoring, in iex
      ExPgflow.list_queues()
      ExPgflow.get_queue_stats("proposals_for_consensus_queue")
      ExPgflow.list_pending_messages("proposals_for_consensus_queue")
      ExPgflow.list_dlq_messages() |> Enum.each(&IO.inspect/1)
      ExPgflow.retry_dlq_message(message_id)
      ExPgflow.purge_dlq()

      # seed 000's test
      messages = ExPgflow.list_messages("proposals_for_consensus_queue")
      Enum.any?(messages, &(&1.proposal_id == proposal.id))

  **Where a call connects.** `publish(app, queue, message)` reads `app`'s configuration,
  `config app, :pgflow_queues` (the key of seeds 000 and 003), through
  `Pgflow.Config.connect_for/2`: the producer (or consumer) entry of that queue when it names
  its own server (seed 000's `{name, url, opts}`), else the configuration's `database_url`.
  With no configuration for `app` there, `PGFLOW_DATABASE_URL` (seed 000's environment) is
  used; with none at all the send fails with code 08001. The admin calls take `conn:` or
  `app:`; without either they use the one server that the loaded applications' `:pgflow_queues`
  configurations name (one node runs one of the seeds' services; several services on one
  server are fine), else `PGFLOW_DATABASE_URL`, and raise when that is ambiguous or unknown.
  Each server gets one shared, reconnecting connection (`ExPgflow.Connections`).

  **Return shapes.** `publish/3` returns `{:ok, message_id}` or `{:error, reason}`, as seed 000
  matches it; the admin calls return plain values (lists, maps, counts), as seeds 000 and 003
  use them (`Enum.each(ExPgflow.list_dlq_messages(), ...)`), and raise the `Pgflow.Error` of a
  failed call. `Pgflow` has the same calls returning `{:ok, _}` tuples.

  **Payloads.** A message goes out through `Pgflow.Payload` (`timestamp: DateTime.utc_now()`
  is sent as ISO 8601), and comes back as the seeds read it: `Pgflow.Payload.both_keys/1`, in
  handlers (`ExPgflow.Consumer`) and in what `list_messages/1`, `list_pending_messages/1` and
  `list_dlq_messages/0` return.
  """

  alias Pgflow.{Config, Payload}

  @typedoc "`conn:` (a `Pgflow` connection) or `app:` (whose configuration names the server)."
  @type opts :: keyword()

  @doc """
  Sends `message` to the queue `queue` (not a topic: see `Pgflow.publish_topic/4`) on the
  server `app`'s configuration names for it. `opts` as `Pgflow.send/4` (`priority`, `delay`,
  `headers`, `dedup_key`, ...). Returns `{:ok, message_id}`.
  """
  @spec publish(atom(), String.t(), map(), keyword()) ::
          {:ok, integer()} | {:error, Pgflow.Error.t()}
  def publish(app, queue, message, opts \\ []) do
    with {:ok, conn} <- app_conn(app, queue), do: Pgflow.send(conn, queue, message, opts)
  end

  @doc "Every queue with its settings (`Pgflow.list_queues/1`)."
  @spec list_queues(opts()) :: [map()]
  def list_queues(opts \\ []), do: opts |> pgflow_opts() |> Pgflow.list_queues() |> value!()

  @doc "A queue's statistics (`Pgflow.get_queue_stats/2`): `%{queue_length:, dlq_length:, ...}`."
  @spec get_queue_stats(String.t(), opts()) :: map()
  def get_queue_stats(queue, opts \\ []),
    do: queue |> Pgflow.get_queue_stats(pgflow_opts(opts)) |> value!()

  @doc """
  The payloads waiting in a queue, in delivery order, leasing nothing: each as a handler
  receives it, so `&1["proposal_id"]` and `&1.proposal_id` both work and one can be handed to
  a handler. At most `limit:` (100). `Pgflow.list_pending_messages/2` has the ids and states.
  """
  @spec list_pending_messages(String.t(), opts()) :: [map()]
  def list_pending_messages(queue, opts \\ []) do
    queue
    |> Pgflow.list_pending_messages(pgflow_opts(opts))
    |> value!()
    |> Enum.map(&Payload.both_keys(&1.payload))
  end

  @doc "Seed 000's name for `list_pending_messages/2`."
  @spec list_messages(String.t(), opts()) :: [map()]
  def list_messages(queue, opts \\ []), do: list_pending_messages(queue, opts)

  @doc """
  Dead letters, oldest death first: of every queue (no queue), or of one. Each is a map with
  `queue_name`, `msg_id`, `read_ct`, `died_at`, `reason`, `first_error`, `last_error`,
  `errors`, `payload` (as a handler receives it) and `headers`; at most `limit:` (100).
  """
  @spec list_dlq_messages(String.t() | opts()) :: [map()]
  def list_dlq_messages(queue_or_opts \\ [])

  def list_dlq_messages(opts) when is_list(opts),
    do: opts |> pgflow_opts() |> Pgflow.list_dlq_messages() |> value!() |> Enum.map(&dead/1)

  def list_dlq_messages(queue) when is_binary(queue), do: list_dlq_messages(queue, [])

  @spec list_dlq_messages(String.t(), opts()) :: [map()]
  def list_dlq_messages(queue, opts) do
    queue
    |> Pgflow.list_dlq_messages(pgflow_opts(opts))
    |> value!()
    |> Enum.map(&dead/1)
  end

  defp dead(d), do: Map.update!(d, :payload, &Payload.both_keys/1)

  @doc """
  Moves a dead letter back into its queue as a new message; returns the new id, or nil when it
  is no longer dead. `message_id` is a `msg_id` from `list_dlq_messages/0` (refused, with the
  queues named, if several queues have a dead letter of that id), or the map itself.
  """
  @spec retry_dlq_message(integer() | map(), opts()) :: integer() | nil
  def retry_dlq_message(message_id, opts \\ []),
    do: message_id |> Pgflow.retry_dlq_message(pgflow_opts(opts)) |> value!()

  @doc """
  Deletes dead letters and returns how many: of every queue (in one statement: all or
  nothing), or of one queue.
  """
  @spec purge_dlq(String.t() | opts()) :: non_neg_integer()
  def purge_dlq(queue_or_opts \\ [])

  def purge_dlq(opts) when is_list(opts),
    do: opts |> pgflow_opts() |> Pgflow.purge_dlq() |> value!()

  def purge_dlq(queue) when is_binary(queue), do: purge_dlq(queue, [])

  @spec purge_dlq(String.t(), opts()) :: non_neg_integer()
  def purge_dlq(queue, opts), do: queue |> Pgflow.purge_dlq(pgflow_opts(opts)) |> value!()

  # ---- connections ----

  defp value!({:ok, value}), do: value
  defp value!({:error, error}), do: raise(error)

  defp pgflow_opts(opts) do
    cond do
      opts[:conn] ->
        opts

      app = opts[:app] ->
        case app_conn(app, nil) do
          {:ok, conn} -> Keyword.put(opts, :conn, conn)
          {:error, error} -> raise error
        end

      true ->
        {:ok, conn} = ExPgflow.Connections.get(default_connect())
        Keyword.put(opts, :conn, conn)
    end
  end

  defp app_conn(app, queue) do
    config = Application.get_env(app, :pgflow_queues)

    connect =
      if config,
        do: Config.connect_for(config, queue),
        else: System.get_env("PGFLOW_DATABASE_URL")

    case connect do
      nil ->
        {:error,
         %Pgflow.Error{
           code: "08001",
           message:
             "no server for #{inspect(queue || app)}: config #{inspect(app)}, :pgflow_queues " <>
               "names none (database_url:, or the URL of the queue's entry)" <>
               if(config, do: "", else: ", and PGFLOW_DATABASE_URL is not set")
         }}

      connect ->
        ExPgflow.Connections.get(connect)
    end
  rescue
    e in ArgumentError ->
      {:error,
       %Pgflow.Error{
         code: "08001",
         message: "config #{inspect(app)}, :pgflow_queues: " <> Exception.message(e)
       }}
  end

  # The one server the loaded applications' configurations name.
  defp default_connect do
    configured =
      for {app, _, _} <- Application.loaded_applications(),
          config = Application.get_env(app, :pgflow_queues),
          connect = Config.connect_for(config, nil),
          uniq: true,
          do: {app, connect}

    case Enum.uniq_by(configured, &elem(&1, 1)) do
      [{_, connect}] ->
        connect

      [] ->
        System.get_env("PGFLOW_DATABASE_URL") ||
          raise ArgumentError,
                "ExPgflow: no loaded application has a `config :app, :pgflow_queues, " <>
                  "database_url: ...` and PGFLOW_DATABASE_URL is not set: pass conn: or app:"

      several ->
        raise ArgumentError,
              "ExPgflow: the applications #{Enum.map_join(several, ", ", &inspect(elem(&1, 0)))} " <>
                "configure different servers: pass app: (or conn:)"
    end
  end
end
