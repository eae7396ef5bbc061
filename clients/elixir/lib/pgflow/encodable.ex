defprotocol Pgflow.Encodable do
  @moduledoc """
  Structs that may travel in a payload (`Pgflow.Payload`). A struct opts in with `@derive`:

      @derive Pgflow.Encodable                         # every field
      @derive {Pgflow.Encodable, only: [:id, :score]}  # or except: [:secret]
      defstruct [:id, :score, :secret]

  or with an implementation that returns what to send in its place (any payload term,
  structs included, encoded in turn):

      defimpl Pgflow.Encodable, for: Money do
        def to_payload(%Money{amount: a, currency: c}), do: %{amount: a, currency: c}
      end

  A struct that does not opt in is refused, so a struct's private fields never leave by
  accident.
  """

  # Any holds @derive's code; the encoder refuses a struct that resolves to it.
  @fallback_to_any true

  @doc "What to send in place of `struct`."
  def to_payload(struct)
end

defimpl Pgflow.Encodable, for: Any do
  defmacro __deriving__(module, struct, opts) do
    fields = struct |> Map.keys() |> List.delete(:__struct__)

    fields =
      cond do
        only = opts[:only] -> only
        except = opts[:except] -> fields -- except
        true -> fields
      end

    quote do
      defimpl Pgflow.Encodable, for: unquote(module) do
        def to_payload(struct), do: Map.take(struct, unquote(fields))
      end
    end
  end

  # Reached only by calling the protocol directly with a struct that did not opt in.
  def to_payload(term) do
    raise Protocol.UndefinedError,
      protocol: @protocol,
      value: term,
      description: "derive or implement Pgflow.Encodable to send it"
  end
end
