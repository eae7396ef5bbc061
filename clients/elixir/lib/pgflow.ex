defmodule Pgflow do
  @moduledoc """
  A small Elixir client for pgflow: plain SQL calls (`pgflow.send`, `pgflow.read`, ...) over
  Debian's Erlang PostgreSQL driver p1_pgsql, with JSON through jiffy.

  Every call returns `{:ok, value}` or `{:error, %Pgflow.Error{}}`; the error keeps the
  server's SQLSTATE (`42704` unknown queue, `22023` bad argument, `23514` contract violation,
  `55000` lease lost, ...). A failed call leaves the connection usable.

  What the driver dictates (see docs/clients.md):
    * parameters go out as text (charlists of UTF-8 bytes), and every result column is cast to
      text in the SQL here, so nothing depends on the driver's binary decoders;
    * each call is a `gen_server:call` with the default 5 s timeout, so a long-poll `read`
      waits at most `#{4_000}` ms per call (loop for longer waits, as `Pgflow.Consumer` does);
    * the driver drops NOTIFY messages, so consumers use the long-poll `read` (woken by the
      server on commit), not LISTEN.
  """

  require Logger
  alias Pgflow.{Error, Message, Payload}

  @max_wait_ms 4_000

  # The statements every connection prepares once, by name.
  @statements %{
    send: ~S"""
    SELECT pgflow.send($1, $2::jsonb, $3::jsonb, ($4::bigint * interval '1 ms'), $5::int,
                       $6, $7)::text
    """,
    read: ~S"""
    SELECT msg_id::text, read_ct::text, enqueued_at::text, vt::text, message::text, headers::text,
           receipt::text
      FROM pgflow.read($1, ($2::bigint * interval '1 ms'), $3::int, ($4::bigint * interval '1 ms'))
    """,
    archive: "SELECT pgflow.archive($1, $2::bigint, $3::bigint)::text",
    archive_read: ~S"""
    SELECT msg_id::text, read_ct::text, enqueued_at::text, vt::text, message::text, headers::text,
           receipt::text
      FROM pgflow.archive_read($1, $2::bigint[], ($3::bigint * interval '1 ms'), $4::int,
                               ($5::bigint * interval '1 ms'), $6::bigint[])
    """,
    nack: ~S"""
    SELECT outcome::text, read_ct::text FROM pgflow.nack($1, $2::bigint, $3,
             retry_after => ($4::bigint * interval '1 ms'), read_ct => $5::int,
             receipt => $6::bigint)
    """,
    set_vt: ~S"""
    SELECT msg_id::text FROM pgflow.set_vt($1, $2::bigint, ($3::bigint * interval '1 ms'),
                                           $4::bigint)
    """,
    publish:
      "SELECT queue_name::text, msg_id::text FROM pgflow.publish($1, $2::jsonb, $3::jsonb)",
    metrics: "SELECT row_to_json(m)::text FROM pgflow.metrics($1, $2::boolean) m",
    list_queues: ~S"""
    SELECT row_to_json(q)::text FROM (
      SELECT queue_name, max_retries, retry_backoff, retry_jitter, created_at, default_priority,
             notify, contract_version, alert_dlq, alert_depth, session_leases,
             (extract(epoch FROM visibility_timeout) * 1000)::bigint AS visibility_timeout_ms,
             (extract(epoch FROM retry_delay) * 1000)::bigint AS retry_delay_ms,
             (extract(epoch FROM retry_delay_max) * 1000)::bigint AS retry_delay_max_ms,
             (extract(epoch FROM archive_retention) * 1000)::bigint AS archive_retention_ms,
             (extract(epoch FROM dedup_window) * 1000)::bigint AS dedup_window_ms,
             (extract(epoch FROM alert_age) * 1000)::bigint AS alert_age_ms
        FROM pgflow.list_queues()) q
    """,
    list_pending: "SELECT row_to_json(p)::text FROM pgflow.list_pending($1, $2::int) p",
    dlq_list: "SELECT row_to_json(d)::text FROM pgflow.dlq_list($1, $2::int) d",
    dlq_list_all: "SELECT row_to_json(d)::text FROM pgflow.dlq_list_all($1::int) d",
    dlq_retry: "SELECT pgflow.dlq_retry($1, $2::bigint)::text",
    # The queues whose dead letters include this id (ids are per queue).
    dlq_find: "SELECT queue_name FROM pgflow.dlq_list_all(2147483647) WHERE msg_id = $1::bigint",
    queue_exists:
      "SELECT EXISTS (SELECT 1 FROM pgflow.list_queues() q WHERE q.queue_name = $1)::text",
    dlq_purge: "SELECT pgflow.dlq_purge($1)::text",
    # Every queue's dead letters, in one statement: all or nothing (42501 when the caller may
    # not administer one of the queues).
    dlq_purge_all:
      "SELECT coalesce(sum(pgflow.dlq_purge(queue_name)), 0)::text FROM pgflow.list_queues()"
  }

  # The connection the admin calls use when given none: the one `Pgflow.Supervisor` (or a
  # `Pgflow.Connection` child) registers.
  @default_conn Pgflow.Conn

  # Priority names for `send/4`'s `priority` (and the seeds' `priority: :high`).
  @priorities %{high: 10, normal: 0, low: -10}

  @type conn :: pid() | atom() | {:via, module(), term()}
  @type result(t) :: {:ok, t} | {:error, Error.t()}

  @doc """
  Connects. `opts` is a keyword list (`host`, `port`, `user`, `password`, `database`), a
  libpq-style string such as `"host=127.0.0.1 port=5432 user=app dbname=app password=s"`, or
  a URL, `"postgresql://app:s@127.0.0.1:5432/app"` (percent-encoded user and password).
  Password authentication may be md5 or SCRAM-SHA-256.

  `pooled: true` (`pooled=true` in a string, `?pooled=true` in a URL) is for a connection
  through PgBouncer in transaction mode, where consecutive statements may reach different
  server connections: nothing is prepared at connect, and each call runs as one transaction
  that prepares its statement, runs it and deallocates it (three round trips instead of one).
  """
  @spec connect(keyword() | String.t()) :: result(pid())
  def connect("postgres" <> _ = url), do: url |> parse_url() |> connect()
  def connect(opts) when is_binary(opts), do: opts |> parse_dsn() |> connect()

  def connect(opts) when is_list(opts) do
    {:ok, _} = Application.ensure_all_started(:stringprep)
    {:ok, _} = Application.ensure_all_started(:p1_pgsql)
    redact_driver_reports()
    pooled = opts[:pooled] in [true, "true", "1"]

    driver_opts =
      for {k, v} <- opts, k in [:host, :port, :user, :password, :database] do
        # UTF-8 bytes, not code points: the driver and its SASLprep work on bytes.
        {k, if(is_binary(v), do: :binary.bin_to_list(v), else: v)}
      end

    case :pgsql.connect(driver_opts) do
      {:ok, conn} ->
        # SQL PREPAREs in one simple query: one round trip. The driver's own prepare/3 sends
        # Parse, Describe and Sync as three packets and waits out a delayed ACK (~40 ms) each.
        prepares =
          for {name, sql} <- @statements, into: "" do
            "PREPARE #{stmt(name)} AS #{sql};"
          end

        cond do
          pooled ->
            :persistent_term.put({Pgflow.Pooled, conn}, true)
            {:ok, conn}

          true ->
            case simple(conn, prepares) do
              :ok -> {:ok, conn}
              error -> error
            end
        end

      {:error, reason} ->
        {:error, %Error{code: "08001", message: "connection failed: #{inspect(reason)}"}}
    end
  end

  # When the driver's connection process stops on something it does not expect (a notice at
  # commit: see lost/1), OTP logs its crash report with the process state, which holds the
  # connection's options, password included. A logger filter, installed once, redacts it.
  defp redact_driver_reports do
    case :logger.add_primary_filter(:pgflow_redact_driver_state, {&redact_report/2, nil}) do
      :ok -> :ok
      {:error, {:already_exist, _}} -> :ok
      _ -> :ok
    end
  end

  @doc false
  def redact_report(
        %{msg: {:report, %{label: {:gen_server, :terminate}, state: state} = r}} = e,
        _
      )
      when is_tuple(state) and tuple_size(state) > 1 and elem(state, 0) == :state do
    if is_list(elem(state, 1)) and Keyword.keyword?(elem(state, 1)) and
         Keyword.has_key?(elem(state, 1), :password) do
      %{e | msg: {:report, %{r | state: :"(the driver's state: redacted by pgflow)"}}}
    else
      :ignore
    end
  end

  def redact_report(_event, _), do: :ignore

  @doc "Closes the connection."
  @spec close(conn()) :: :ok
  def close(conn) do
    # Closing a connection that is already gone is not an error.
    call(fn -> :pgsql.terminate(conn) end)
    _ = :persistent_term.erase({Pgflow.Pooled, conn})
    :ok
  end

  @doc """
  Sends one message; returns its id. `opts`: `headers` (map), `delay` (ms), `priority`,
  `group_key`, `dedup_key`. `priority` is an integer (higher first) or `:high` (10), `:normal`
  (0), `:low` (-10). A queue with a contract checks the payload (23514 names the field). Emits
  `[:pgflow, :publish]` (`Pgflow.Telemetry`).
  """
  @spec send(conn(), String.t(), map(), keyword()) :: result(integer())
  def send(conn, queue, payload, opts \\ []) do
    started = System.monotonic_time()

    result =
      with {:ok, body} <- Payload.encode(payload),
           {:ok, headers} <- json(opts[:headers], "headers"),
           params = [
             queue,
             body,
             headers,
             opts[:delay] || 0,
             Map.get(@priorities, opts[:priority], opts[:priority]),
             opts[:group_key],
             opts[:dedup_key]
           ],
           {:ok, [[id]]} <- exec(conn, :send, params),
           do: {:ok, String.to_integer(id)}

    published(started, 1, %{queue: queue}, result, fn id -> %{msg_id: id} end)
    result
  end

  defp published(started, count, meta, result, on_ok) do
    meta =
      case result do
        {:ok, value} -> meta |> Map.put(:result, :ok) |> Map.merge(on_ok.(value))
        {:error, error} -> Map.merge(meta, %{result: :error, error: error})
      end

    count = if match?({:ok, _}, result), do: count, else: 0
    measurements = %{duration: System.monotonic_time() - started, count: count}
    Pgflow.Telemetry.execute([:pgflow, :publish], measurements, meta)
  end

  @doc """
  Leases up to `qty` messages. `opts`: `vt` (lease in ms; default: the queue's), `qty` (1),
  `wait` (ms, at most #{@max_wait_ms}: sleep in the server until a message arrives).
  """
  @spec read(conn(), String.t(), keyword()) :: result([Message.t()])
  def read(conn, queue, opts \\ []) do
    wait = opts[:wait]

    if is_integer(wait) and wait > @max_wait_ms do
      raise ArgumentError,
            "wait: #{wait} ms is longer than the driver's 5 s call timeout allows " <>
              "(at most #{@max_wait_ms} ms per read; loop for longer)"
    end

    with {:ok, rows} <- exec(conn, :read, [queue, opts[:vt], opts[:qty] || 1, wait]) do
      {:ok, Enum.map(rows, &Message.from_row/1)}
    end
  end

  @doc """
  Archives the messages `ids` (those still in the queue) and leases up to `qty` more, in one
  statement and one commit: a consumer loop's round trip. Options as for `read/3`; with
  `wait`, the archive commits when the read returns. Each of `ids` is an id, or a
  `{id, receipt}` pair naming the delivery received (`Pgflow.Message`'s `receipt`): a message
  delivered again since, or another message given the same id after a failover, is then not
  archived.
  """
  @spec archive_read(conn(), String.t(), [integer() | {integer(), integer()}], keyword()) ::
          result([Message.t()])
  def archive_read(conn, queue, ids, opts \\ []) when is_list(ids) do
    wait = opts[:wait]

    if is_integer(wait) and wait > @max_wait_ms do
      raise ArgumentError, "wait: #{wait} ms is longer than #{@max_wait_ms} ms per call"
    end

    {ids, receipts} = receipted(ids)
    params = [queue, ids, opts[:vt], opts[:qty] || 1, wait, receipts]

    with {:ok, rows} <- exec(conn, :archive_read, params) do
      {:ok, Enum.map(rows, &Message.from_row/1)}
    end
  end

  # Ids, or {id, receipt} pairs, as the two bigint[] literals of the SQL call (receipts nil
  # when none is given; a nil receipt in a pair checks nothing for its id).
  defp receipted(ids) do
    lit = fn xs ->
      "{" <> Enum.map_join(xs, ",", &if(&1, do: Integer.to_string(&1), else: "NULL")) <> "}"
    end

    plain =
      Enum.map(ids, fn
        {id, _} -> id
        id -> id
      end)

    pairs? = Enum.any?(ids, &is_tuple/1)

    receipts =
      if pairs?,
        do:
          lit.(
            Enum.map(ids, fn
              {_, r} -> r
              _ -> nil
            end)
          )

    {lit.(plain), receipts}
  end

  @doc """
  Archives a message; `true` when it was in the queue. With `receipt:` (the `Pgflow.Message`'s),
  only if it is still the delivery received.
  """
  @spec archive(conn(), String.t(), integer(), keyword()) :: result(boolean())
  def archive(conn, queue, id, opts \\ []) do
    with {:ok, [[b]]} <- exec(conn, :archive, [queue, id, opts[:receipt]]), do: {:ok, b == "true"}
  end

  @doc """
  Reports a failed delivery: the message is retried after the queue's backoff (or
  `retry_after` ms), or dead-lettered once out of attempts. Pass the `receipt:` (or `read_ct:`)
  you received: if your lease was lost meanwhile, the server answers 55000 instead of touching
  the new holder's delivery (the receipt also refuses another message given the same id after
  a failover). Returns `:retry`, `:dead` or `:gone` (no such message).
  """
  @spec nack(conn(), String.t(), integer(), keyword()) :: result(:retry | :dead | :gone)
  def nack(conn, queue, id, opts \\ []) do
    params = [queue, id, opts[:error], opts[:retry_after], opts[:read_ct], opts[:receipt]]

    case exec(conn, :nack, params) do
      {:ok, [[outcome, _]]} -> {:ok, if(outcome == "dead", do: :dead, else: :retry)}
      {:ok, []} -> {:ok, :gone}
      error -> error
    end
  end

  @doc """
  Sets a message's lease to now + `vt_ms` (extends it; 0 hands the message back). With
  `receipt:`, a lease lost meanwhile is a 55000 error and nothing changes.
  """
  @spec set_vt(conn(), String.t(), integer(), non_neg_integer(), keyword()) :: result(boolean())
  def set_vt(conn, queue, id, vt_ms, opts \\ []) do
    with {:ok, rows} <- exec(conn, :set_vt, [queue, id, vt_ms, opts[:receipt]]),
         do: {:ok, rows != []}
  end

  @doc """
  Publishes on a topic; returns `[{queue, msg_id}]`, one per queue bound to a matching pattern
  (all or nothing), `[]` when no binding matches (nothing is stored). To put a message in a
  queue, use `send/4`.
  """
  @spec publish_topic(conn(), String.t(), map(), map() | nil) ::
          result([{String.t(), integer()}])
  def publish_topic(conn, topic, payload, headers \\ nil) do
    started = System.monotonic_time()

    result =
      with {:ok, body} <- Payload.encode(payload),
           {:ok, headers} <- json(headers, "headers"),
           {:ok, rows} <- exec(conn, :publish, [topic, body, headers]) do
        {:ok, for([q, id] <- rows, do: {q, String.to_integer(id)})}
      end

    count = with {:ok, list} <- result, do: length(list), else: (_ -> 0)
    published(started, count, %{topic: topic}, result, fn list -> %{queues: list} end)
    result
  end

  @doc """
  The former name of `publish_topic/4`, kept for topics. A name that is a queue's and that no
  binding matches is refused (code 42809, and a warning is logged): `publish_topic/4` would
  store nothing there, which is never what a caller that names a queue means. Use `send/4` for
  a queue, `publish_topic/4` for a topic.
  """
  @spec publish(conn(), String.t(), map(), map() | nil) :: result([{String.t(), integer()}])
  def publish(conn, topic, payload, headers \\ nil) do
    case publish_topic(conn, topic, payload, headers) do
      {:ok, []} = none ->
        case exec(conn, :queue_exists, [topic]) do
          {:ok, [["true"]]} ->
            message =
              "Pgflow.publish/4 publishes on topics, and #{inspect(topic)} is a queue's name " <>
                "that no binding matches: nothing was stored. Send to the queue with " <>
                "Pgflow.send/4 (or ExPgflow.publish/3); publish on topics with " <>
                "Pgflow.publish_topic/4"

            Logger.warning(message)
            {:error, %Error{code: "42809", message: message}}

          _ ->
            none
        end

      other ->
        other
    end
  end

  @doc "A queue's metrics as a map (`queue_length`, `visible`, `in_flight`, `dlq_length`, ...)."
  @spec metrics(conn(), String.t()) :: result(map())
  def metrics(conn, queue) do
    with {:ok, [[m]]} <- exec(conn, :metrics, [queue, "false"]), do: {:ok, decode(m)}
  end

  # ---- the admin API, with the seeds' names ----
  #
  # Each takes `conn:` in its options (default: `Pgflow.Conn`, the connection
  # `Pgflow.Supervisor` registers) and returns maps with atom keys.

  @doc """
  Every queue with its settings: `%{queue_name:, max_retries:, retry_delay_ms:, ...}`, times in
  ms (`pgflow.list_queues`).
  """
  @spec list_queues(keyword()) :: result([map()])
  def list_queues(opts \\ []), do: rows(opts, :list_queues, [])

  @doc """
  A queue's statistics (`pgflow.metrics`): `%{queue_length:, visible:, in_flight:, delayed:,
  dlq_length:, oldest_msg_age_sec:, total_messages:, ...}`. `exact: true` counts the rows.
  """
  @spec get_queue_stats(String.t(), keyword()) :: result(map())
  def get_queue_stats(queue, opts \\ []) do
    with {:ok, [m]} <- rows(opts, :metrics, [queue, to_string(opts[:exact] == true)]),
         do: {:ok, m}
  end

  @doc """
  What waits in a queue, without leasing it (`pgflow.list_pending`): deliverable messages
  first in `read`'s order, `%{msg_id:, state:, read_ct:, priority:, payload:, ...}`; at most
  `limit` (100).
  """
  @spec list_pending_messages(String.t(), keyword()) :: result([map()])
  def list_pending_messages(queue, opts \\ []),
    do: rows(opts, :list_pending, [queue, opts[:limit] || 100])

  @doc """
  Dead letters, oldest death first: of every queue the caller administers (no queue) or of one
  queue; at most `limit` (100). Each is `%{queue_name:, msg_id:, read_ct:, died_at:, reason:,
  first_error:, last_error:, errors:, payload:, headers:, ...}`.
  """
  @spec list_dlq_messages() :: result([map()])
  def list_dlq_messages, do: list_dlq_messages([])

  @spec list_dlq_messages(String.t() | keyword()) :: result([map()])
  def list_dlq_messages(opts) when is_list(opts),
    do: rows(opts, :dlq_list_all, [opts[:limit] || 100])

  def list_dlq_messages(queue) when is_binary(queue), do: list_dlq_messages(queue, [])

  @spec list_dlq_messages(String.t(), keyword()) :: result([map()])
  def list_dlq_messages(queue, opts) when is_binary(queue) and is_list(opts) do
    # The queue's name in each map too, as in every queue's listing, so that any of them can
    # be handed to retry_dlq_message/2.
    with {:ok, dead} <- rows(opts, :dlq_list, [queue, opts[:limit] || 100]),
         do: {:ok, Enum.map(dead, &Map.put(&1, :queue_name, queue))}
  end

  @doc """
  Moves a dead letter back into its queue as a new message; returns its new id, or nil when
  it is no longer in the DLQ. Takes a map from `list_dlq_messages/0`, a queue and an id, or an
  id alone: ids are per queue, so an id found in the DLQs of several queues is refused (code
  21000, naming them) and nothing moves.
  """
  @spec retry_dlq_message(map() | String.t() | integer(), integer() | keyword()) ::
          result(integer() | nil)
  def retry_dlq_message(dead, opts \\ [])

  def retry_dlq_message(%{queue_name: queue, msg_id: id}, opts) when is_list(opts),
    do: retry_dlq_message(queue, id, opts)

  def retry_dlq_message(id, opts) when is_integer(id) and is_list(opts) do
    case exec(opts[:conn] || @default_conn, :dlq_find, [id]) do
      {:ok, []} ->
        {:ok, nil}

      {:ok, [[queue]]} ->
        retry_dlq_message(queue, id, opts)

      {:ok, rows} ->
        queues = Enum.map_join(rows, ", ", fn [q] -> inspect(q) end)

        {:error,
         %Error{
           code: "21000",
           message:
             "dead letter #{id} is in the DLQs of several queues (#{queues}): name the queue, " <>
               "retry_dlq_message(queue, #{id})"
         }}

      error ->
        error
    end
  end

  def retry_dlq_message(queue, id) when is_binary(queue) and is_integer(id),
    do: retry_dlq_message(queue, id, [])

  @spec retry_dlq_message(String.t(), integer(), keyword()) :: result(integer() | nil)
  def retry_dlq_message(queue, id, opts) when is_binary(queue) and is_integer(id) do
    case exec(opts[:conn] || @default_conn, :dlq_retry, [queue, id]) do
      {:ok, [[nil]]} -> {:ok, nil}
      {:ok, [[new_id]]} -> {:ok, String.to_integer(new_id)}
      error -> error
    end
  end

  @doc """
  Deletes dead letters and returns how many: of one queue, or (no queue) of every queue in one
  statement, which needs the right to administer all of them (42501 otherwise, and nothing is
  deleted).
  """
  @spec purge_dlq() :: result(non_neg_integer())
  def purge_dlq, do: purge_dlq([])

  @spec purge_dlq(String.t() | keyword()) :: result(non_neg_integer())
  def purge_dlq(opts) when is_list(opts), do: count(opts, :dlq_purge_all, [])
  def purge_dlq(queue) when is_binary(queue), do: purge_dlq(queue, [])

  @spec purge_dlq(String.t(), keyword()) :: result(non_neg_integer())
  def purge_dlq(queue, opts) when is_binary(queue), do: count(opts, :dlq_purge, [queue])

  defp rows(opts, name, params) do
    with {:ok, rows} <- exec(opts[:conn] || @default_conn, name, params) do
      {:ok, for([json] <- rows, do: json |> decode() |> atom_keys())}
    end
  end

  defp count(opts, name, params) do
    with {:ok, [[n]]} <- exec(opts[:conn] || @default_conn, name, params),
         do: {:ok, String.to_integer(n)}
  end

  # Column names are the server's (a fixed set), so turning them into atoms is bounded;
  # `message` is called `payload`, as in `Pgflow.Message`. Nested JSON keeps string keys.
  defp atom_keys(map) do
    Map.new(map, fn
      {"message", v} -> {:payload, v}
      {k, v} -> {String.to_atom(k), v}
    end)
  end

  @doc """
  Runs `fun` in a transaction: BEGIN, then COMMIT if it returns `{:ok, _}` (or `:ok`),
  otherwise ROLLBACK. A raise rolls back and re-raises. Sends, reads and archives inside
  become visible together, or not at all.
  """
  @spec transaction(pid(), (() -> any())) :: any()
  def transaction(conn, _fun) when not is_pid(conn) do
    raise ArgumentError,
          "Pgflow.transaction/2 needs a connection of your own (Pgflow.connect/1), not the " <>
            "shared #{inspect(conn)}: other processes' calls would run inside the transaction"
  end

  def transaction(conn, fun) do
    :ok = simple(conn, "BEGIN")
    Process.put({Pgflow.InTx, conn}, true)

    try do
      fun.()
    rescue
      e ->
        simple(conn, "ROLLBACK")
        reraise e, __STACKTRACE__
    else
      result when result == :ok or (is_tuple(result) and elem(result, 0) == :ok) ->
        case simple(conn, "COMMIT") do
          :ok -> result
          error -> error
        end

      other ->
        simple(conn, "ROLLBACK")
        other
    after
      Process.delete({Pgflow.InTx, conn})
    end
  end

  @doc "Ends any open transaction on the connection (a no-op otherwise)."
  @spec rollback(conn()) :: :ok | {:error, Error.t()}
  def rollback(conn), do: simple(conn, "ROLLBACK")

  @doc """
  Any SQL with `$n` parameters (strings, integers, maps as JSON, nil). Cast result columns to
  text; rows come back as lists of strings (nil for NULL).
  """
  @spec query(conn(), String.t(), list()) :: result([[String.t() | nil]])
  def query(conn, sql, params \\ []) do
    with {:ok, params} <- encode_maps(params) do
      if pooled?(conn), do: pooled(conn, sql, params), else: query_prepared(conn, sql, params)
    end
  end

  # Map parameters as JSON text, or the first one that cannot be encoded as an error.
  defp encode_maps(params) do
    params
    |> Enum.with_index(1)
    |> Enum.reduce_while({:ok, []}, fn
      {m, n}, {:ok, acc} when is_map(m) ->
        case Payload.encode(m, "$#{n}") do
          {:ok, json} -> {:cont, {:ok, [json | acc]}}
          error -> {:halt, error}
        end

      {p, _}, {:ok, acc} ->
        {:cont, {:ok, [p | acc]}}
    end)
    |> case do
      {:ok, acc} -> {:ok, Enum.reverse(acc)}
      error -> error
    end
  end

  defp query_prepared(conn, sql, params) do
    # A name of its own, so callers sharing the connection never collide between the prepare
    # and the unprepare.
    name = ~c"pgflow_adhoc_" ++ Integer.to_charlist(System.unique_integer([:positive]))

    case call(fn -> :pgsql.prepare(conn, name, to_charlist(sql)) end) do
      {:ok, _, _, _} ->
        result = run(conn, name, params)
        call(fn -> :pgsql.unprepare(conn, name) end)
        result

      {:error, fields} when is_list(fields) ->
        {:error, Error.from_fields(fields)}

      {:error, other} ->
        {:error, lost(other)}
    end
  end

  # ---- internals ----

  defp exec(conn, name, params) do
    if pooled?(conn),
      do: pooled(conn, Map.fetch!(@statements, name), params),
      else: run(conn, stmt(name), params)
  end

  @doc false
  def pooled?(conn), do: :persistent_term.get({Pgflow.Pooled, conn}, false)

  # A pooled connection's call. A shared Pgflow.Connection (a name: an atom, or a {:via, ...}
  # tuple) runs the whole sequence as one of its calls, so that no other process's call lands
  # between its statements.
  defp pooled(conn, sql, params) when not is_pid(conn) do
    case call(fn -> GenServer.call(conn, {:pgflow_pooled, sql, params}, :infinity) end) do
      {:error, {:exit, _} = e} -> {:error, lost(e)}
      {:error, :disconnected} -> {:error, lost(:disconnected)}
      other -> other
    end
  end

  defp pooled(conn, sql, params), do: pooled_call(conn, sql, params)

  # One transaction per call (or a savepoint inside the caller's): the statement is prepared,
  # run and deallocated on the one server connection a transaction-mode pooler lends for it.
  # A failed call leaves nothing behind either: its savepoint is rolled back and the statement
  # deallocated before the transaction ends.
  @doc false
  def pooled_call(conn, sql, params) do
    in_tx = Process.get({Pgflow.InTx, conn}, false)
    name = "pgflow_p" <> Integer.to_string(System.unique_integer([:positive]))

    open =
      if(in_tx, do: "", else: "BEGIN; ") <> "PREPARE #{name} AS #{sql}; SAVEPOINT pgflow_call"

    case simple(conn, open) do
      :ok ->
        result = run(conn, to_charlist(name), params)

        undo =
          case result do
            {:ok, _} -> "RELEASE SAVEPOINT pgflow_call; DEALLOCATE #{name}"
            {:error, _} -> "ROLLBACK TO SAVEPOINT pgflow_call; DEALLOCATE #{name}"
          end

        ending =
          cond do
            in_tx -> ""
            match?({:ok, _}, result) -> "; COMMIT"
            true -> "; ROLLBACK"
          end

        case {simple(conn, undo <> ending), result} do
          {:ok, result} -> result
          {{:error, e}, {:ok, _}} -> {:error, e}
          {_, error} -> error
        end

      {:error, _} = error ->
        if not in_tx, do: simple(conn, "ROLLBACK")
        error
    end
  end

  defp run(conn, name, params) do
    case call(fn -> :pgsql.execute(conn, name, Enum.map(params, &param/1)) end) do
      # A command without rows the driver has no case for (BEGIN, COMMIT, CREATE, ...).
      {:ok, {:nyi, _tag}} ->
        {:ok, []}

      {:ok, {_command, rows}} when is_list(rows) ->
        {:ok, Enum.map(rows, fn row -> Enum.map(row, &column/1) end)}

      {:ok, {_command, _count}} ->
        {:ok, []}

      {:error, fields} when is_list(fields) ->
        {:error, Error.from_fields(fields)}

      {:error, other} ->
        {:error, lost(other)}
    end
  end

  # A lost connection as an error: 08006 with what the driver said, briefly.
  defp lost({:exit, {reason, {:gen_server, :call, _}}}), do: lost(reason)
  defp lost({:exit, reason}), do: lost(reason)
  defp lost(:timeout), do: %Error{code: "08006", message: "connection lost: the call timed out"}

  # The driver stops the connection when a notice arrives between the statement's result and
  # the server's ready-for-query: that is, at commit, where Postgres sends one when a commit's
  # wait for the synchronous standby is cancelled ("canceling wait for synchronous
  # replication": committed locally, maybe lost in a failover). The driver drops the notice's
  # text, so the client cannot be sure which notice it was: either way the outcome is unknown.
  defp lost({:notice_response, _}),
    do: %Error{
      code: "08006",
      unknown_outcome: true,
      message:
        "outcome unknown: the server sent a notice at commit (a cancelled wait for the " <>
          "synchronous standby: committed here, maybe not on the standby), and the driver " <>
          "closed the connection; send again with the same dedup_key"
    }

  defp lost(reason), do: %Error{code: "08006", message: "connection lost: #{inspect(reason)}"}

  # A call to the connection's process; a dead process or a call timeout is a lost connection
  # (the connection's state is unknown after a timeout), not a crash of the caller.
  defp call(fun) do
    fun.()
  catch
    :exit, reason -> {:error, {:exit, reason}}
  end

  # A simple-protocol statement with no result (BEGIN, COMMIT, ROLLBACK).
  defp simple(conn, sql) do
    case call(fn -> :pgsql.squery(conn, to_charlist(sql)) end) do
      {:ok, results} ->
        case List.keyfind(results, :error, 0) do
          {:error, fields} -> {:error, Error.from_fields(fields)}
          nil when sql == "COMMIT" and results == [~c"ROLLBACK"] -> {:error, Error.rolled_back()}
          nil -> :ok
        end

      {:error, other} ->
        {:error, lost(other)}
    end
  end

  defp stmt(name), do: ~c"pgflow_" ++ Atom.to_charlist(name)

  defp param(nil), do: :null
  defp param(i) when is_integer(i), do: i
  defp param(b) when is_binary(b), do: :binary.bin_to_list(b)

  defp column({_type, :null}), do: nil
  defp column({_type, value}) when is_binary(value), do: value
  defp column({_type, value}) when is_list(value), do: List.to_string(value)

  # Optional JSON arguments (headers): nil stays NULL.
  defp json(nil, _root), do: {:ok, nil}
  defp json(term, root), do: Payload.encode(term, root)

  @doc false
  def decode(nil), do: nil
  def decode(text), do: :jiffy.decode(text, [:return_maps, {:null_term, nil}])

  defp parse_url(url) do
    uri = URI.parse(url)

    {user, password} =
      case String.split(uri.userinfo || "", ":", parts: 2) do
        [""] -> {nil, nil}
        [u] -> {URI.decode(u), nil}
        [u, p] -> {URI.decode(u), URI.decode(p)}
      end

    db = (uri.path || "/") |> String.trim_leading("/") |> URI.decode()

    query = URI.decode_query(uri.query || "")

    [
      host: uri.host || "localhost",
      port: uri.port || 5432,
      user: user,
      password: password,
      database: if(db == "", do: user, else: db),
      pooled: query["pooled"]
    ]
    |> Enum.reject(fn {_, v} -> is_nil(v) end)
  end

  defp parse_dsn(dsn) do
    for pair <- String.split(dsn), [k, v] = String.split(pair, "=", parts: 2) do
      case k do
        "host" -> {:host, v}
        "port" -> {:port, String.to_integer(v)}
        "user" -> {:user, v}
        "password" -> {:password, v}
        "dbname" -> {:database, v}
        "pooled" -> {:pooled, v}
        other -> raise ArgumentError, "unsupported connection key #{inspect(other)}"
      end
    end
  end
end
