defmodule Pgflow.Telemetry do
  @moduledoc """
  Events, with `:telemetry`'s function shapes: handlers attach here (`attach/4`,
  `attach_many/4`), and, when the `:telemetry` library is loaded, every event is also emitted
  with `:telemetry.execute/3`, so `:telemetry.attach/4` handlers receive them too. pgflow does
  not depend on `:telemetry` (it is not in Debian); at each event it checks whether the
  `:telemetry` module is loaded (it is, once anything has attached a handler to it).

  The events (durations in `:native` time units, as `:telemetry.span/3` reports them):

    * `[:pgflow, :publish]`: after every `Pgflow.send/4` and `Pgflow.publish_topic/4`.
      Measurements `%{duration: native, count: messages}`; metadata `%{queue: name}` (or
      `%{topic: name}`), `result: :ok | :error`, and `msg_id` (send), `queues` (publish) or
      `error` (a `Pgflow.Error`).
    * `[:pgflow, :consume, :start]`: a consumer's handler starts on a message. Measurements
      `%{system_time: native, monotonic_time: native}`; metadata `%{queue:, consumer:,
      msg_id:, read_ct:, payload:}`.
    * `[:pgflow, :consume, :stop]`: the handler returned. Measurements `%{duration: native}`;
      metadata as at start plus `outcome`: `:archive` (archived with the worker's next round
      trip), `:retry` (nacked, retried later), `:dead` (nacked and dead-lettered) or `:lost`
      (the lease had been lost).
    * `[:pgflow, :consume, :exception]`: the handler raised, exited or timed out. As `:stop`,
      plus `kind`, `reason` and `stacktrace`.
    * `[:pgflow, :consume, :retry]`, `[:pgflow, :consume, :dead]`, `[:pgflow, :consume,
      :lost]`: a failed delivery (an error, a raise, a timeout, `{:retry, ms}`) was nacked and
      will be retried, was dead-lettered, or could not be nacked. Measurements `%{count: 1}`;
      metadata `%{queue:, consumer:, msg_id:, read_ct:, reason:}` (reason: text).

  With them come the names of the seeds (`[:evolution, :pgflow, ...]`, see
  `ExPgflow.Telemetry`) for the evolution queues, here and through `:telemetry` alike.

  Handlers run in the process that emits the event (a consumer's worker, or the caller of
  `send`), so they should be quick. A handler that raises is detached and logged, as
  `:telemetry` does.
  """

  require Logger

  # :telemetry is called only when it is loaded; pgflow does not depend on it.
  @compile {:no_warn_undefined, :telemetry}

  @key {__MODULE__, :handlers}

  @type event :: [atom(), ...]
  @type handler :: (event(), map(), map(), term() -> any())

  @doc "The events pgflow emits."
  @spec events() :: [event()]
  def events,
    do: [
      [:pgflow, :publish],
      [:pgflow, :consume, :start],
      [:pgflow, :consume, :stop],
      [:pgflow, :consume, :exception],
      [:pgflow, :consume, :retry],
      [:pgflow, :consume, :dead],
      [:pgflow, :consume, :lost]
    ]

  @doc "Attaches `fun` to one event; `{:error, :already_exists}` when `id` is taken."
  @spec attach(term(), event(), handler(), term()) :: :ok | {:error, :already_exists}
  def attach(id, event, fun, config), do: attach_many(id, [event], fun, config)

  @doc "Attaches `fun` to several events under one id."
  @spec attach_many(term(), [event()], handler(), term()) :: :ok | {:error, :already_exists}
  def attach_many(id, events, fun, config) when is_list(events) and is_function(fun, 4) do
    update(fn handlers ->
      if Enum.any?(handlers, &(&1.id == id)) do
        {{:error, :already_exists}, handlers}
      else
        {:ok, handlers ++ [%{id: id, events: events, fun: fun, config: config}]}
      end
    end)
  end

  @doc "Detaches the handler `id`."
  @spec detach(term()) :: :ok | {:error, :not_found}
  def detach(id) do
    update(fn handlers ->
      case Enum.split_with(handlers, &(&1.id == id)) do
        {[], _} -> {{:error, :not_found}, handlers}
        {_, rest} -> {:ok, rest}
      end
    end)
  end

  @doc "The handlers attached to an event starting with `prefix` (all with `[]`)."
  @spec list_handlers(list()) :: [map()]
  def list_handlers(prefix) do
    for h <- handlers(), Enum.any?(h.events, &List.starts_with?(&1, prefix)), do: h
  end

  @doc """
  Emits an event, and the seeds' names for it (`ExPgflow.Telemetry.seed_events/2`), to the
  handlers attached here and, when it is loaded, through `:telemetry.execute/3`.
  """
  @spec execute(event(), map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    dispatch(event, measurements, metadata)

    for {seed_event, seed_metadata} <- ExPgflow.Telemetry.seed_events(event, metadata),
        do: dispatch(seed_event, measurements, seed_metadata)

    :ok
  end

  defp dispatch(event, measurements, metadata) do
    # Loaded, not loadable: a :telemetry handler can only be attached by code that loaded the
    # module, and looking for an absent module would search the code path at every event.
    if :erlang.module_loaded(:telemetry),
      do: :telemetry.execute(event, measurements, metadata)

    for %{events: events} = h <- handlers(), event in events do
      try do
        h.fun.(event, measurements, metadata, h.config)
      rescue
        e ->
          detach(h.id)

          Logger.error(
            "pgflow telemetry handler #{inspect(h.id)} raised and was detached: " <>
              Exception.message(e)
          )
      catch
        kind, reason ->
          detach(h.id)

          Logger.error(
            "pgflow telemetry handler #{inspect(h.id)} failed (#{kind}: #{inspect(reason)}) and was detached"
          )
      end
    end
  end

  defp handlers, do: :persistent_term.get(@key, [])

  # Attach and detach are rare: a global lock serializes them, and readers see a consistent
  # list through :persistent_term without any lock.
  defp update(fun) do
    :global.trans(
      {__MODULE__, self()},
      fn ->
        {reply, handlers} = fun.(handlers())
        :persistent_term.put(@key, handlers)
        reply
      end,
      [node()]
    )
  end
end
