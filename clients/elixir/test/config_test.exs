defmodule Pgflow.ConfigTest.Handlers do
  def handle(message), do: {:ok, message}
  def handle_with_conn(_message, _conn), do: :ok
  def three(_a, _b, _c), do: :ok
end

defmodule Pgflow.ConfigTest do
  # The seeds' configuration shapes and the consumer's options, read without a server.
  use ExUnit.Case, async: false
  alias Pgflow.{Config, Consumer}
  alias Pgflow.ConfigTest.Handlers

  @url "postgresql://app:s@db.example/singularity"

  # Seed 003's Singularity configuration, with this file's handler.
  defp seed003 do
    [
      database_url: @url,
      producers: [
        {:proposals_for_consensus,
         %{
           queue_name: "proposals_for_consensus_queue",
           workers: 2,
           max_retries: 3,
           retry_delay_ms: 1000
         }}
      ],
      consumers: [
        {:rollback_triggers,
         %{
           queue_name: "rollback_triggers_queue",
           workers: 1,
           handler: Handlers,
           handler_method: :handle,
           max_retries: 3,
           retry_delay_ms: 1000,
           priority: :high
         }}
      ]
    ]
  end

  test "seed 003: the database_url serves every entry; a consumer entry is a consumer" do
    cfg = Config.parse(seed003())
    assert cfg.connect == @url and cfg.name == Pgflow.Conn and cfg.create_queues == false

    assert [
             %{
               key: :proposals_for_consensus,
               queue: "proposals_for_consensus_queue",
               connect: @url
             }
           ] = cfg.producers

    assert [{:rollback_triggers, opts}] = cfg.consumers

    assert %{
             name: :rollback_triggers,
             connect: @url,
             queue: "rollback_triggers_queue",
             handler: {Handlers, :handle},
             handler_conn: false,
             deliver: :message,
             workers: 1,
             batch: 1,
             parallel: 1,
             priority: :high
           } = Consumer.options(opts)

    assert Config.connect_for(seed003(), "proposals_for_consensus_queue") == @url
    assert Config.connect_for(seed003(), nil) == @url
  end

  test "seed 000: producers keep their own URLs and name their queue <name>_queue; consumers " <>
         "without a handler are refused, named" do
    other = "postgres://app:s@other.example/singularity"

    config = [
      producers: [
        {:proposals_for_consensus, @url, [workers: 2]},
        {:metrics_to_guardian, other, [workers: 2]}
      ],
      consumers: [{:consensus_results_consumer, @url, [workers: 2]}]
    ]

    assert Config.connect_for(config, "proposals_for_consensus_queue") == @url
    assert Config.connect_for(config, "metrics_to_guardian_queue") == other
    # No queue of theirs and two servers: no answer rather than a guess.
    assert Config.connect_for(config, "patterns_for_aggregator_queue") == nil

    e = assert_raise ArgumentError, fn -> Config.parse(config) end
    assert e.message =~ "pgflow consumer :consensus_results_consumer: a consumer needs :queue"
    assert e.message =~ "queue_name:, handler: and handler_method:"

    # With what it lacks, the same shape is a consumer on its own server.
    fixed = [
      consumers: [
        {:consensus_results_consumer, @url,
         [
           workers: 2,
           queue_name: "consensus_results_queue",
           handler: Handlers,
           handler_method: :handle
         ]}
      ]
    ]

    assert %{connect: @url, consumers: [{_, %{connect: @url, workers: 2}}]} = Config.parse(fixed)
  end

  test "seed 004: batch_size, max_parallel_workers, poll_interval_ms, timeout_ms take effect" do
    genesis = [
      enabled: true,
      poll_interval_ms: 1000,
      batch_size: 10,
      timeout_ms: 30000,
      enable_parallel_processing: true,
      max_parallel_workers: 4
    ]

    base = [connect: @url, queue: "code_execution_requests", handler: &Handlers.handle/1]

    # One worker (one connection) reads 10 at a time and runs 4 handlers at once.
    assert %{workers: 1, batch: 10, parallel: 4, wait: 1000, timeout: 30000, enabled: true} =
             Consumer.options(base ++ genesis)

    # Sequential when parallel processing is off; the interval is a long poll of at most 4 s.
    assert %{parallel: 1, batch: 10, wait: 4000} =
             Consumer.options(
               base ++
                 Keyword.merge(genesis,
                   enable_parallel_processing: false,
                   poll_interval_ms: 10_000
                 )
             )

    # Without batch_size, a read fills the parallel slots.
    assert %{batch: 4, parallel: 4} = Consumer.options(base ++ [max_parallel_workers: 4])
    # enabled: false: not started (and nothing connects).
    assert :ignore = Consumer.start_link(base ++ [enabled: false])

    # At the top of a configuration they are every consumer's defaults.
    cfg =
      Config.parse(
        genesis ++
          [
            database_url: @url,
            consumers: [
              {:jobs,
               %{
                 queue_name: "code_execution_requests",
                 handler: Handlers,
                 handler_method: :handle
               }},
              {:rules,
               %{
                 queue_name: "genesis_rule_updates",
                 handler: Handlers,
                 handler_method: :handle,
                 batch_size: 2
               }}
            ]
          ]
      )

    assert [{:jobs, jobs}, {:rules, rules}] = cfg.consumers
    assert %{batch: 10, parallel: 4, wait: 1000} = Consumer.options(jobs)
    assert %{batch: 2, parallel: 4} = Consumer.options(rules)
  end

  test "repo: the Ecto repo's configuration, read from the application that has it" do
    Application.put_env(:pgflow, Pgflow.ConfigTest.Repo,
      hostname: "db.example",
      port: 5433,
      database: "genesis",
      username: "genesis",
      password: "s"
    )

    on_exit(fn -> Application.delete_env(:pgflow, Pgflow.ConfigTest.Repo) end)

    assert Config.repo_connect(Pgflow.ConfigTest.Repo) == [
             host: "db.example",
             port: 5433,
             database: "genesis",
             user: "genesis",
             password: "s"
           ]

    assert %{connect: [{:host, "db.example"} | _]} =
             Consumer.options(
               repo: Pgflow.ConfigTest.Repo,
               queue: "q",
               handler: &Handlers.handle/1
             )

    Application.put_env(:pgflow, Pgflow.ConfigTest.Repo, url: "ecto://u:p@db.example/genesis")
    assert Config.repo_connect(Pgflow.ConfigTest.Repo) == "postgresql://u:p@db.example/genesis"

    e = assert_raise ArgumentError, fn -> Config.repo_connect(Pgflow.ConfigTest.NoRepo) end
    assert e.message =~ "Pgflow.ConfigTest.NoRepo"
  end

  test "a key no one reads, or an entry of no known shape, is refused and named" do
    e =
      assert_raise ArgumentError, fn ->
        Config.parse(Keyword.put(seed003(), :pool_size, 10))
      end

    assert e.message =~ "unknown key :pool_size"

    [{key, entry}] = seed003()[:consumers]
    typo = Keyword.put(seed003(), :consumers, [{key, Map.put(entry, :batch_sise, 10)}])
    e = assert_raise ArgumentError, fn -> Config.parse(typo) end
    assert e.message =~ "pgflow consumer :rollback_triggers: unknown consumer option :batch_sise"

    producer = Keyword.put(seed003(), :producers, [{:p, %{queue_name: "q", retries: 3}}])
    e = assert_raise ArgumentError, fn -> Config.parse(producer) end
    assert e.message =~ "pgflow producer :p: unknown key :retries"

    e = assert_raise ArgumentError, fn -> Config.parse(producers: [{:lonely}]) end
    assert e.message =~ "pgflow producer entry {:lonely}"

    e = assert_raise ArgumentError, fn -> Config.parse(consumers: %{}) end
    assert e.message =~ "pgflow consumers: expected a list"
  end

  test "a handler of the wrong shape is refused when the consumer starts" do
    base = [connect: @url, queue: "q"]

    for {handler, why} <- [
          {[handler: fn _, _, _ -> :ok end], "a fn of arity 3"},
          {[handler: 42], "handler: 42 is not a function"},
          {[handler: Handlers], "needs handler_method:"},
          {[handler: Handlers, handler_method: :three], "Handlers.three/1 or /2 is not defined"},
          {[handler: Pgflow.ConfigTest.Missing, handler_method: :handle],
           "module Pgflow.ConfigTest.Missing cannot be loaded"},
          {[handler: {Handlers, :nope}], "Handlers.nope/1 or /2 is not defined"},
          {[], "a consumer needs :handler"}
        ] do
      e = assert_raise ArgumentError, fn -> Consumer.options(base ++ handler) end
      assert e.message =~ why

      # The same refusal at the start of a supervised consumer and of a configuration.
      assert_raise ArgumentError, fn -> Consumer.child_spec(base ++ handler) end

      assert_raise ArgumentError, ~r/pgflow consumer :c: #{Regex.escape(e.message)}/, fn ->
        Config.parse(database_url: @url, consumers: [{:c, Map.new([queue_name: "q"] ++ handler)}])
      end
    end

    assert %{handler_conn: true} =
             Consumer.options(base ++ [handler: Handlers, handler_method: :handle_with_conn])

    for {key, value} <- [deliver: :json, missing_queue: :ignore, workers: 0, batch_size: "10"] do
      e =
        assert_raise ArgumentError, fn ->
          Consumer.options(base ++ [{:handler, &Handlers.handle/1}, {key, value}])
        end

      assert e.message =~ inspect(key)
    end
  end

  test "ExPgflow.Consumer: nil outside an application is refused; one consumer's options " <>
         "are a configuration" do
    # A test process belongs to no application.
    assert :application.get_application() == :undefined

    assert_raise ArgumentError, ~r/got nil outside an application/, fn ->
      ExPgflow.Consumer.child_spec(nil)
    end

    # One consumer's options alone are a configuration of one consumer.
    assert %{start: {ExPgflow.Consumer, :start_link, [config]}} =
             ExPgflow.Consumer.child_spec(
               connect: @url,
               queue_name: "rollback_triggers_queue",
               handler: Handlers,
               handler_method: :handle
             )

    assert %{
             name: nil,
             consumers: [{"rollback_triggers_queue", %{deliver: :payload, missing_queue: :wait}}]
           } = Config.parse(config)
  end
end
