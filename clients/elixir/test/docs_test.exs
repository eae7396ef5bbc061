defmodule Pgflow.DocsTest do
  # The Elixir blocks of clients/elixir/README.md and docs/clients.md run as written, in order,
  # against the test database (issue #33: docs that run). What the text changes: only the
  # documents' connection strings, which become the test role's. What a block needs and does
  # not show is declared in an HTML comment right before it, which this test reads:
  #
  #   <!-- docs-test: elixir-prelude CODE -->  code run first, in the block's own evaluation
  #   <!-- docs-test: elixir-config -->        a config file: read with Config.Reader, and its
  #                                            applications' settings put in place
  #
  # The state a block needs from the server (a queue, a dead letter) is made here, before the
  # block, and what it did is checked after it.
  use ExUnit.Case, async: false
  import ExUnit.CaptureIO
  import Pgflow.TestHelper

  @root Path.expand("../../..", __DIR__)
  @doc_dsn "host=127.0.0.1 port=5432 user=app password=s dbname=app"
  @doc_url "postgresql://app:secret@localhost/singularity"
  @touched ~w(proposals_for_consensus_queue rollback_triggers_queue code_execution_requests)

  # {line, directives, code} of every ```elixir block of a document.
  defp blocks(doc) do
    lines = @root |> Path.join(doc) |> File.read!() |> String.split("\n")

    {out, _, _} =
      lines
      |> Enum.with_index(1)
      |> Enum.reduce({[], [], nil}, fn
        {"```elixir", n}, {out, pending, nil} -> {out, pending, {n, []}}
        {"```" <> _, _}, {out, pending, {n, acc}} -> {[{n, pending, body(acc)} | out], [], nil}
        {line, _}, {out, pending, {n, acc}} -> {out, pending, {n, [line | acc]}}
        {line, _}, {out, pending, nil} -> {out, directives(line, pending), nil}
      end)

    Enum.reverse(out)
  end

  defp body(acc), do: acc |> Enum.reverse() |> Enum.join("\n")

  defp directives(line, pending) do
    case Regex.run(~r/^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$/, line) do
      [_, d] -> pending ++ [d]
      nil -> if String.trim(line) == "", do: pending, else: []
    end
  end

  defp run_block({line, directives, code}, doc) do
    code = code |> String.replace(@doc_dsn, dsn()) |> String.replace(@doc_url, url())

    if "elixir-config" in directives do
      config = Config.Reader.eval!(Path.join(@root, doc), code)
      Application.put_all_env(config)
      config
    else
      prelude = for "elixir-prelude " <> c <- directives, do: c
      source = Enum.join(prelude ++ [code], "\n")

      try do
        {_, binding} = Code.eval_string(source, [], file: doc, line: line - length(prelude))
        binding
      rescue
        e -> flunk("#{doc}:#{line}: the block raised #{Exception.format(:error, e)}")
      end
    end
  end

  defp rollback_trigger(proposal_id) do
    %{
      "type" => "rollback_trigger",
      "proposal_id" => proposal_id,
      "instance_id" => "singularity-1",
      "reason" => "docs test",
      "timestamp" => DateTime.to_iso8601(DateTime.utc_now())
    }
  end

  # Sends a rollback trigger and nacks it until it is dead-lettered; its id.
  defp dead_letter!(conn, queue) do
    {:ok, id} = Pgflow.send(conn, queue, rollback_trigger("9d3e1f20-4a5b-4c6d-8e7f-0a1b2c3d4e5f"))

    Enum.reduce_while(1..20, nil, fn _, _ ->
      {:ok, [m]} = Pgflow.read(conn, queue, vt: 30_000)
      assert m.id == id

      case Pgflow.nack(conn, queue, id, error: "docs test", retry_after: 0, receipt: m.receipt) do
        {:ok, :dead} -> {:halt, id}
        {:ok, :retry} -> {:cont, nil}
      end
    end)
  end

  setup do
    conn = conn!()
    env = for app <- [:singularity], do: {app, Application.get_all_env(app)}
    url_before = System.get_env("PGFLOW_DATABASE_URL")

    for q <- @touched,
        do: {:ok, _} = Pgflow.query(conn, "SELECT pgflow.purge_queue($1)::text", [q])

    {:ok, _} = Pgflow.purge_dlq(conn: conn)

    on_exit(fn ->
      {:ok, c} = Pgflow.connect(dsn())

      for q <- @touched,
          do: {:ok, _} = Pgflow.query(c, "SELECT pgflow.purge_queue($1)::text", [q])

      {:ok, _} = Pgflow.purge_dlq(conn: c)
      Pgflow.close(c)

      for {app, kv} <- env do
        for {k, _} <- Application.get_all_env(app), do: Application.delete_env(app, k)
        for {k, v} <- kv, do: Application.put_env(app, k, v)
      end

      if url_before,
        do: System.put_env("PGFLOW_DATABASE_URL", url_before),
        else: System.delete_env("PGFLOW_DATABASE_URL")
    end)

    {:ok, conn: conn}
  end

  test "the documents have the blocks this test knows" do
    assert length(blocks("clients/elixir/README.md")) == 6
    assert length(blocks("docs/clients.md")) == 1
    # Every block that names a server names the documents' one, which the test replaces.
    for doc <- ["clients/elixir/README.md", "docs/clients.md"], {line, _, code} <- blocks(doc) do
      for [s] <- Regex.scan(~r/"(?:host=|postgres(?:ql)?:\/\/)[^"]*"/, code) do
        assert s in [
                 inspect(@doc_dsn),
                 inspect(@doc_url),
                 ~s("postgresql://localhost/singularity")
               ],
               "#{doc}:#{line} names another server: #{s}"
      end
    end
  end

  test "the client's README runs top to bottom", %{conn: conn} do
    doc = "clients/elixir/README.md"
    [seeds_config, seeds_calls, app_config, app_start, admin, calls] = blocks(doc)

    # The seeds: their configuration reads the server from PGFLOW_DATABASE_URL.
    System.put_env("PGFLOW_DATABASE_URL", url())
    config = run_block(seeds_config, doc)
    assert get_in(config, [:singularity, :pgflow_queues, :database_url]) == url()

    out = capture_io(fn -> send(self(), {:binding, run_block(seeds_calls, doc)}) end)
    assert_received {:binding, b}
    assert b[:children] == [{ExPgflow.Consumer, nil}]
    assert is_integer(b[:message_id])
    assert Enum.any?(b[:queues], &(&1.queue_name == "proposals_for_consensus_queue"))
    assert b[:stats].queue_length == 1
    assert [%{"proposal_id" => "0b5d0c5e-6f1a-4f7e-9a52-3c1d2e4f5a6b"}] = b[:waiting]
    # The DLQs were emptied first: the block's Enum.each printed nothing.
    assert out == ""

    # An application with Pgflow.Supervisor: its configuration, then its start.
    run_block(app_config, doc)
    assert Application.fetch_env!(:singularity, :pgflow_queues)[:database_url] == url()
    run_block(app_start, doc)

    # Its consumer hands a rollback trigger to seed 000's handler, whose repo stand-in reports
    # to the process registered as :seeds_test.
    Process.register(self(), :seeds_test)

    try do
      assert is_pid(Process.whereis(Pgflow.Conn))
      assert {:ok, _} = Pgflow.list_queues()
      p = "5e0c7a52-3b9d-4c1e-8f6a-7d2b1c0e9f84"
      {:ok, _} = Pgflow.send(conn, "rollback_triggers_queue", rollback_trigger(p))
      assert_receive {:seed, {:repo_update, {:rolled_back, ^p, "docs test"}}}, 30_000
    after
      Process.unregister(:seeds_test)
      Supervisor.stop(Singularity.Supervisor)
    end

    # The admin calls, on a shared connection, with a dead letter in rollback_triggers_queue.
    start_supervised!({Pgflow.Connection, connect: dsn()})
    dead_id = dead_letter!(conn, "rollback_triggers_queue")
    b = run_block(admin, doc)
    assert [%{queue_name: "rollback_triggers_queue", msg_id: ^dead_id}] = b[:dead]
    assert is_integer(b[:new_id])
    assert b[:n] == 0
    assert b[:msgs] == [] and b[:stats].dlq_length == 1

    # The calls: a queue 'jobs'.
    fresh_queue!(conn, "jobs")
    b = run_block(calls, doc)
    assert is_integer(b[:id])
    # 42 archived, 43 nacked (to be retried), 44 sent in the transaction.
    assert archived_counts(conn, "jobs") == %{b[:id] => 1}

    assert one!(conn, "SELECT count(*)::text FROM pgflow.message m JOIN pgflow.queue q
                        USING (queue_id) WHERE q.queue_name = 'jobs'") == "2"

    {:ok, _} = Pgflow.query(conn, "SELECT pgflow.drop_queue('jobs')::text")
  end

  test "docs/clients.md's block runs", %{conn: conn} do
    doc = "docs/clients.md"
    [block] = blocks(doc)
    # What it takes from the README: the seeds' configuration, and the shared connection.
    System.put_env("PGFLOW_DATABASE_URL", url())
    [seeds_config | _] = blocks("clients/elixir/README.md")
    run_block(seeds_config, "clients/elixir/README.md")
    start_supervised!({Pgflow.Connection, connect: dsn()})

    out = capture_io(fn -> send(self(), {:binding, run_block(block, doc)}) end)
    assert_received {:binding, b}
    assert out == ""
    assert b[:msg] =~ "code_execution_requests"
    assert b[:dead] == []
    assert is_integer(b[:message_id])
    assert archived_counts(conn, "code_execution_requests")[b[:id]] == 1

    assert one!(conn, "SELECT count(*)::text FROM pgflow.message m JOIN pgflow.queue q
                        USING (queue_id) WHERE q.queue_name = 'code_execution_requests'") == "1"
  end
end
