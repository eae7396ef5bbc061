# Structs for the payload tests (test/payload_test.exs), compiled before Pgflow.Encodable is
# consolidated: a struct that opts in with @derive, one that opts in with only some fields,
# one with an implementation of its own, and one that does not opt in.
defmodule Pgflow.Test.Derived do
  @derive Pgflow.Encodable
  defstruct [:id, :at]
end

defmodule Pgflow.Test.Partial do
  @derive {Pgflow.Encodable, except: [:secret]}
  defstruct [:id, :secret]
end

defmodule Pgflow.Test.Money do
  defstruct [:cents, :currency]

  defimpl Pgflow.Encodable do
    def to_payload(%{cents: c, currency: cur}) do
      cents = c |> rem(100) |> Integer.to_string() |> String.pad_leading(2, "0")
      %{amount: "#{div(c, 100)}.#{cents}", currency: cur}
    end
  end
end

defmodule Pgflow.Test.Private do
  defstruct [:token]
end
