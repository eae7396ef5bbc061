defmodule Pgflow.Seeds do
  @moduledoc """
  The seeds' code (000 the integration guide, 003 the configuration guide, 004 Genesis's
  settings) as they wrote it, running on this client: `singularity.ex`, `centralcloud.ex` and
  `genesis.ex` hold their modules unchanged, with stand-ins for the parts of their services the
  seeds do not show (the consensus engine, the repo, ...), and `config/` their configuration.
  `clients/elixir/test/seeds_test.exs` starts them as OTP applications against the evolution
  queues.

  This module is the test's side of the stand-ins: they report each call to the process
  registered as `:seeds_test`, and a test can make the consensus engine fail for a proposal
  (`poison/1`) or hold the job executor at a gate (`gate/1`).
  """

  @doc "Reports a stand-in's call to the test, if one listens."
  def record(call) do
    if pid = Process.whereis(:seeds_test), do: send(pid, {:seed, call})
    :ok
  end

  @doc "The consensus engine raises for this proposal until `cure/1`."
  def poison(proposal_id), do: :persistent_term.put({__MODULE__, :poisoned, proposal_id}, true)
  def cure(proposal_id), do: :persistent_term.erase({__MODULE__, :poisoned, proposal_id})

  def poisoned?(proposal_id),
    do: :persistent_term.get({__MODULE__, :poisoned, proposal_id}, false)

  @doc """
  Makes each job wait at the gate: it reports `{:job_started, id, pid}`, waits for `:go`, and
  the highest number of jobs in at once is kept for `max_in/0`. `gate(false)` opens it.
  """
  def gate(true) do
    :persistent_term.put({__MODULE__, :gate}, :atomics.new(2, signed: false))
  end

  def gate(false), do: :persistent_term.erase({__MODULE__, :gate})

  def max_in, do: :atomics.get(:persistent_term.get({__MODULE__, :gate}), 2)

  @doc false
  def at_gate(id) do
    case :persistent_term.get({__MODULE__, :gate}, nil) do
      nil ->
        :ok

      counts ->
        now_in = :atomics.add_get(counts, 1, 1)
        bump(counts, now_in)
        record({:job_started, id, self()})

        receive do
          :go -> :atomics.sub(counts, 1, 1)
        end
    end
  end

  defp bump(counts, now_in) do
    max = :atomics.get(counts, 2)

    if now_in > max and :atomics.compare_exchange(counts, 2, max, now_in) != :ok,
      do: bump(counts, now_in)
  end
end
