# The tests run against a real server: PGFLOW_TEST_DSN (a superuser, trust) for setup, and
# PGFLOW_TEST_SCRAM_DSN (a role that must log in with SCRAM-SHA-256) for everything the
# client does. tests/clients/elixir.sh sets both up on a database where
# examples/evolution/topology.sql and contracts.sql ran.
for var <- ["PGFLOW_TEST_DSN", "PGFLOW_TEST_SCRAM_DSN"] do
  System.get_env(var) || raise "#{var} is not set (run tests/clients/elixir.sh)"
end

defmodule Pgflow.TestHelper do
  import ExUnit.Assertions

  def dsn, do: System.fetch_env!("PGFLOW_TEST_SCRAM_DSN")

  # The test role's DSN as a URL (seed 003 writes postgresql:// URLs).
  def url do
    [user, pass, port, db] =
      for k <- ~w(user password port dbname) do
        [_, v] = Regex.run(~r/(?:^|\s)#{k}=(\S+)/, dsn())
        v
      end

    "postgresql://#{URI.encode_www_form(user)}:#{URI.encode_www_form(pass)}@127.0.0.1:#{port}/#{db}"
  end

  def conn! do
    {:ok, conn} = Pgflow.connect(dsn())
    conn
  end

  # A fresh queue with the given create_queue arguments (SQL, after the name).
  def fresh_queue!(conn, name, args \\ "") do
    {:ok, _} = Pgflow.query(conn, "SELECT pgflow.drop_queue($1, if_exists => true)::text", [name])
    {:ok, [["true"]]} = Pgflow.query(conn, "SELECT pgflow.create_queue($1 #{args})::text", [name])
    name
  end

  def one!(conn, sql, params \\ []) do
    assert {:ok, [[value]]} = Pgflow.query(conn, sql, params)
    value
  end

  # How many times each message id of a queue was archived (the audit trail).
  def archived_counts(conn, queue) do
    {:ok, rows} =
      Pgflow.query(
        conn,
        "SELECT a.msg_id::text, count(*)::text FROM pgflow.archive a JOIN pgflow.queue q
           USING (queue_id) WHERE q.queue_name = $1 GROUP BY a.msg_id",
        [queue]
      )

    Map.new(rows, fn [id, n] -> {String.to_integer(id), String.to_integer(n)} end)
  end
end

# p1_pgsql's socket process logs an error report when a connection it closed itself goes
# away (and prints "Sock closed"); that is the driver's normal close, not a failure.
:logger.add_primary_filter(:pgsql_close, {
  fn
    %{msg: {:report, %{label: {:gen_server, :terminate}, reason: :tcp_close}}}, _ -> :stop
    _, _ -> :ignore
  end,
  nil
})

# The pooling tests need PgBouncer in front of the server (tests/cluster/pooling.sh).
ExUnit.start(exclude: if(System.get_env("PGFLOW_POOLED_DSN"), do: [], else: [:pooling]))
