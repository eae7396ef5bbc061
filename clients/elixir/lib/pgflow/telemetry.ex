defmodule Pgflow.Telemetry do
  @moduledoc """
  Events, with `:telemetry`'s function shapes (`:telemetry` is not in Debian, so handlers
  attach here). An application that uses `:telemetry` forwards every event in one line:

      Pgflow.Telemetry.attach_many("pgflow-to-telemetry", Pgflow.Telemetry.events(),
        fn event, measurements, metadata, _ -> :telemetry.execute(event, measurements, metadata) end, nil)

  The events (durations in `:native` time units, as `:telemetry.span/3` reports them):

    * `[:pgflow, :publish]`: after every `Pgflow.send/4` and `Pgflow.publish/4`.
      Measurements `%{duration: native, count: messages}`; metadata `%{queue: name}` (or
      `%{topic: name}`), `result: :ok | :error`, and `msg_id` (send), `queues` (publish) or
      `error` (a `Pgflow.Error`).
    * `[:pgflow, :consume, :start]`: a consumer's handler starts on a message. Measurements
      `%{system_time: native, monotonic_time: native}`; metadata `%{queue:, consumer:,
      msg_id:, read_ct:}`.
    * `[:pgflow, :consume, :stop]`: the handler returned. Measurements `%{duration: native}`;
      metadata as at start plus `outcome`: `:archive` (archived with the worker's next round
      trip), `:retry` (nacked, retried later), `:dead` (nacked and dead-lettered) or `:lost`
      (the lease had been lost).
    * `[:pgflow, :consume, :exception]`: the handler raised, exited or timed out. As `:stop`,
      plus `kind`, `reason` and `stacktrace`.

  Handlers run in the process that emits the event (a consumer's worker, or the caller of
  `send`), so they should be quick. A handler that raises is detached and logged, as
  `:telemetry` does.
  """

  require Logger

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
      [:pgflow, :consume, :exception]
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

  @doc "Emits an event to the handlers attached to it."
  @spec execute(event(), map(), map()) :: :ok
  def execute(event, measurements, metadata) do
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

    :ok
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
