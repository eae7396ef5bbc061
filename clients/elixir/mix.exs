defmodule Pgflow.MixProject do
  use Mix.Project

  # No Hex dependencies: the driver (p1_pgsql), its SCRAM helper (stringprep) and the JSON
  # codec (jiffy) come from Debian's erlang-p1-pgsql and erlang-jiffy packages, which install
  # into the Erlang lib directory where the code server finds them. So `mix test` works offline.
  def project do
    [
      app: :pgflow,
      version: "0.2.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: [],
      # The library is lib/ alone. In the test environment the evolution example
      # (examples/evolution/elixir), which is written against this library, is compiled and
      # tested with it.
      elixirc_paths: elixirc_paths(Mix.env()),
      test_paths: test_paths(Mix.env())
    ]
  end

  @example Path.expand("../../examples/evolution/elixir", __DIR__)
  # test/support: modules the tests need compiled (structs that implement a protocol before
  # it is consolidated).
  defp elixirc_paths(:test), do: ["lib", "test/support", @example]
  defp elixirc_paths(_), do: ["lib"]
  defp test_paths(:test), do: ["test", @example]
  defp test_paths(_), do: ["test"]

  def application do
    [
      mod: {Pgflow.Application, []},
      extra_applications: [:logger, :crypto, :p1_pgsql, :stringprep, :jiffy]
    ]
  end
end
