defmodule Pgflow.Connection do
  @moduledoc """
  A named connection that reconnects: for publishing and for the admin calls from anywhere in
  the application (`Pgflow.send(Pgflow.Conn, ...)`, `Pgflow.list_queues()`), as a child of a
  supervision tree (`Pgflow.Supervisor` starts one).

      {Pgflow.Connection, connect: "postgresql://app:secret@db/app", name: Pgflow.Conn}

  Every `Pgflow` call accepts its name where it takes a connection. Calls are served one at a
  time, in order. When the connection is lost, calls fail with SQLSTATE 08006 at once while
  it reconnects, after 100 ms doubling up to 5 s. Prepared statements are set up again on each
  connection.

  A shared connection must not carry transactions: another process's call would run inside
  them. `Pgflow.transaction/2` refuses a name for that reason; open a connection of your own
  (`Pgflow.connect/1`) for transactions and long-poll reads.
  """
  use GenServer
  require Logger

  @max_backoff 5_000

  def start_link(opts) do
    GenServer.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, Pgflow.Conn))
  end

  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.get(opts, :name, Pgflow.Conn)},
      start: {__MODULE__, :start_link, [opts]}
    }
  end

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)

    connect =
      Keyword.get(opts, :connect) || raise ArgumentError, "Pgflow.Connection needs :connect"

    name = Keyword.get(opts, :name, Pgflow.Conn)
    {:ok, %{connect: connect, conn: nil, backoff: 100, name: name}, {:continue, :connect}}
  end

  @impl true
  def handle_continue(:connect, st), do: {:noreply, connect(st)}

  @impl true
  def handle_info(:reconnect, st), do: {:noreply, connect(st)}

  def handle_info({:EXIT, conn, reason}, %{conn: conn} = st) do
    Logger.warning("pgflow connection lost (#{inspect(reason)}); reconnecting")
    {:noreply, connect(%{st | conn: nil, backoff: 100})}
  end

  def handle_info(_other, st), do: {:noreply, st}

  # The driver's requests (execute, squery, prepare, unprepare) are passed through.
  @impl true
  def handle_call(_request, _from, %{conn: nil} = st) do
    {:reply, {:error, :disconnected}, st}
  end

  # A call over a pooled connection: its statements run here, one after another, so no other
  # caller's call lands between them.
  def handle_call({:pgflow_pooled, sql, params}, _from, %{conn: conn} = st) do
    {:reply, Pgflow.pooled_call(conn, sql, params), st}
  end

  def handle_call(request, _from, %{conn: conn} = st) do
    reply =
      try do
        :gen_server.call(conn, request, :infinity)
      catch
        :exit, _ -> {:error, :disconnected}
      end

    {:reply, reply, st}
  end

  @impl true
  def terminate(_reason, %{conn: conn}) when is_pid(conn), do: Pgflow.close(conn)
  def terminate(_reason, _st), do: :ok

  defp connect(st) do
    case Pgflow.connect(st.connect) do
      {:ok, conn} ->
        Process.link(conn)
        # Callers find out by name that the connection is pooled (Pgflow.pooled?/1).
        if Pgflow.pooled?(conn), do: :persistent_term.put({Pgflow.Pooled, st.name}, true)
        %{st | conn: conn, backoff: 100}

      {:error, error} ->
        Logger.warning(
          "pgflow connection: #{Exception.message(error)}; retrying in #{st.backoff} ms"
        )

        Process.send_after(self(), :reconnect, st.backoff)
        %{st | backoff: min(st.backoff * 2, @max_backoff)}
    end
  end
end
