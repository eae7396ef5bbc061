defmodule Pgflow.MixProject do
  use Mix.Project

  # No Hex dependencies: the driver (p1_pgsql), its SCRAM helper (stringprep) and the JSON
  # codec (jiffy) come from Debian's erlang-p1-pgsql and erlang-jiffy packages, which install
  # into the Erlang lib directory where the code server finds them. So `mix test` works offline.
  def project do
    [
      app: :pgflow,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: []
    ]
  end

  def application do
    [extra_applications: [:logger, :p1_pgsql, :stringprep, :jiffy]]
  end
end
