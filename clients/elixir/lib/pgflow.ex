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

  alias Pgflow.{Error, Message}

  @max_wait_ms 4_000

  # The statements every connection prepares once, by name.
  @statements %{
    send: ~S"""
    SELECT pgflow.send($1, $2::jsonb, $3::jsonb, ($4::bigint * interval '1 ms'), $5::int,
                       $6, $7)::text
    """,
    read: ~S"""
    SELECT msg_id::text, read_ct::text, enqueued_at::text, vt::text, message::text, headers::text
      FROM pgflow.read($1, ($2::bigint * interval '1 ms'), $3::int, ($4::bigint * interval '1 ms'))
    """,
    archive: "SELECT pgflow.archive($1, $2::bigint)::text",
    archive_read: ~S"""
    SELECT msg_id::text, read_ct::text, enqueued_at::text, vt::text, message::text, headers::text
      FROM pgflow.archive_read($1, $2::bigint[], ($3::bigint * interval '1 ms'), $4::int,
                               ($5::bigint * interval '1 ms'))
    """,
    nack: ~S"""
    SELECT outcome::text, read_ct::text FROM pgflow.nack($1, $2::bigint, $3,
             retry_after => ($4::bigint * interval '1 ms'), read_ct => $5::int)
    """,
    set_vt:
      "SELECT msg_id::text FROM pgflow.set_vt($1, $2::bigint, ($3::bigint * interval '1 ms'))",
    publish:
      "SELECT queue_name::text, msg_id::text FROM pgflow.publish($1, $2::jsonb, $3::jsonb)",
    metrics: "SELECT row_to_json(m)::text FROM pgflow.metrics($1) m"
  }

  @type conn :: pid()
  @type result(t) :: {:ok, t} | {:error, Error.t()}

  @doc """
  Connects. `opts` is a keyword list (`host`, `port`, `user`, `password`, `database`) or a
  libpq-style string such as `"host=127.0.0.1 port=5432 user=app dbname=app password=s"`.
  Password authentication may be md5 or SCRAM-SHA-256.
  """
  @spec connect(keyword() | String.t()) :: result(conn())
  def connect(opts) when is_binary(opts), do: opts |> parse_dsn() |> connect()

  def connect(opts) when is_list(opts) do
    {:ok, _} = Application.ensure_all_started(:stringprep)
    {:ok, _} = Application.ensure_all_started(:p1_pgsql)

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

        case simple(conn, prepares) do
          :ok -> {:ok, conn}
          error -> error
        end

      {:error, reason} ->
        {:error, %Error{code: "08001", message: "connection failed: #{inspect(reason)}"}}
    end
  end

  @doc "Closes the connection."
  @spec close(conn()) :: :ok
  def close(conn), do: :pgsql.terminate(conn)

  @doc """
  Sends one message; returns its id. `opts`: `headers` (map), `delay` (ms), `priority`,
  `group_key`, `dedup_key`. A queue with a contract checks the payload (23514 names the field).
  """
  @spec send(conn(), String.t(), map(), keyword()) :: result(integer())
  def send(conn, queue, payload, opts \\ []) do
    params = [
      queue,
      json(payload),
      json(opts[:headers]),
      opts[:delay] || 0,
      opts[:priority],
      opts[:group_key],
      opts[:dedup_key]
    ]

    with {:ok, [[id]]} <- exec(conn, :send, params), do: {:ok, String.to_integer(id)}
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
  `wait`, the archive commits when the read returns.
  """
  @spec archive_read(conn(), String.t(), [integer()], keyword()) :: result([Message.t()])
  def archive_read(conn, queue, ids, opts \\ []) when is_list(ids) do
    wait = opts[:wait]

    if is_integer(wait) and wait > @max_wait_ms do
      raise ArgumentError, "wait: #{wait} ms is longer than #{@max_wait_ms} ms per call"
    end

    ids = "{" <> Enum.map_join(ids, ",", &Integer.to_string/1) <> "}"
    params = [queue, ids, opts[:vt], opts[:qty] || 1, wait]

    with {:ok, rows} <- exec(conn, :archive_read, params) do
      {:ok, Enum.map(rows, &Message.from_row/1)}
    end
  end

  @doc "Archives a message; `true` when it was in the queue."
  @spec archive(conn(), String.t(), integer()) :: result(boolean())
  def archive(conn, queue, id) do
    with {:ok, [[b]]} <- exec(conn, :archive, [queue, id]), do: {:ok, b == "true"}
  end

  @doc """
  Reports a failed delivery: the message is retried after the queue's backoff (or
  `retry_after` ms), or dead-lettered once out of attempts. Pass the `read_ct` you received:
  if your lease was lost meanwhile, the server answers 55000 instead of touching the new
  holder's delivery. Returns `:retry`, `:dead` or `:gone` (no such message).
  """
  @spec nack(conn(), String.t(), integer(), keyword()) :: result(:retry | :dead | :gone)
  def nack(conn, queue, id, opts \\ []) do
    params = [queue, id, opts[:error], opts[:retry_after], opts[:read_ct]]

    case exec(conn, :nack, params) do
      {:ok, [[outcome, _]]} -> {:ok, if(outcome == "dead", do: :dead, else: :retry)}
      {:ok, []} -> {:ok, :gone}
      error -> error
    end
  end

  @doc "Sets a message's lease to now + `vt_ms` (extends it; 0 hands the message back)."
  @spec set_vt(conn(), String.t(), integer(), non_neg_integer()) :: result(boolean())
  def set_vt(conn, queue, id, vt_ms) do
    with {:ok, rows} <- exec(conn, :set_vt, [queue, id, vt_ms]), do: {:ok, rows != []}
  end

  @doc "Publishes on a topic; returns `[{queue, msg_id}]`, one per bound queue (all or nothing)."
  @spec publish(conn(), String.t(), map(), map() | nil) :: result([{String.t(), integer()}])
  def publish(conn, topic, payload, headers \\ nil) do
    with {:ok, rows} <- exec(conn, :publish, [topic, json(payload), json(headers)]) do
      {:ok, for([q, id] <- rows, do: {q, String.to_integer(id)})}
    end
  end

  @doc "A queue's metrics as a map (`queue_length`, `visible`, `in_flight`, `dlq_length`, ...)."
  @spec metrics(conn(), String.t()) :: result(map())
  def metrics(conn, queue) do
    with {:ok, [[m]]} <- exec(conn, :metrics, [queue]), do: {:ok, decode(m)}
  end

  @doc """
  Runs `fun` in a transaction: BEGIN, then COMMIT if it returns `{:ok, _}` (or `:ok`),
  otherwise ROLLBACK. A raise rolls back and re-raises. Sends, reads and archives inside
  become visible together, or not at all.
  """
  @spec transaction(conn(), (() -> any())) :: any()
  def transaction(conn, fun) do
    :ok = simple(conn, "BEGIN")

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
    # A name of its own, so callers sharing the connection never collide between the prepare
    # and the unprepare.
    name = ~c"pgflow_adhoc_" ++ Integer.to_charlist(System.unique_integer([:positive]))

    case :pgsql.prepare(conn, name, to_charlist(sql)) do
      {:ok, _, _, _} ->
        result = run(conn, name, params)
        :pgsql.unprepare(conn, name)
        result

      {:error, fields} ->
        {:error, Error.from_fields(fields)}
    end
  end

  # ---- internals ----

  defp exec(conn, name, params), do: run(conn, stmt(name), params)

  defp run(conn, name, params) do
    case :pgsql.execute(conn, name, Enum.map(params, &param/1)) do
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
        {:error, %Error{code: "08006", message: "driver error: #{inspect(other)}"}}
    end
  end

  # A simple-protocol statement with no result (BEGIN, COMMIT, ROLLBACK).
  defp simple(conn, sql) do
    {:ok, results} = :pgsql.squery(conn, to_charlist(sql))

    case List.keyfind(results, :error, 0) do
      {:error, fields} -> {:error, Error.from_fields(fields)}
      nil when sql == "COMMIT" and results == [~c"ROLLBACK"] -> {:error, Error.rolled_back()}
      nil -> :ok
    end
  end

  defp stmt(name), do: ~c"pgflow_" ++ Atom.to_charlist(name)

  defp param(nil), do: :null
  defp param(i) when is_integer(i), do: i
  defp param(b) when is_binary(b), do: :binary.bin_to_list(b)
  defp param(m) when is_map(m), do: m |> json() |> param()

  defp column({_type, :null}), do: nil
  defp column({_type, value}) when is_binary(value), do: value
  defp column({_type, value}) when is_list(value), do: List.to_string(value)

  @doc false
  def json(nil), do: nil
  def json(term), do: :jiffy.encode(nulls_out(term))

  @doc false
  def decode(nil), do: nil
  def decode(text), do: :jiffy.decode(text, [:return_maps, {:null_term, nil}])

  defp nulls_out(nil), do: :null
  defp nulls_out(m) when is_map(m), do: Map.new(m, fn {k, v} -> {k, nulls_out(v)} end)
  defp nulls_out(l) when is_list(l), do: Enum.map(l, &nulls_out/1)
  defp nulls_out(v), do: v

  defp parse_dsn(dsn) do
    for pair <- String.split(dsn), [k, v] = String.split(pair, "=", parts: 2) do
      case k do
        "host" -> {:host, v}
        "port" -> {:port, String.to_integer(v)}
        "user" -> {:user, v}
        "password" -> {:password, v}
        "dbname" -> {:database, v}
        other -> raise ArgumentError, "unsupported connection key #{inspect(other)}"
      end
    end
  end
end
