# Mix loads one test_helper.exs per test path before any test runs. ExUnit and the shared
# helpers (Pgflow.TestHelper) come from clients/elixir/test/test_helper.exs, loaded first.
