defmodule Pgflow.Error do
  @moduledoc """
  A server error with its SQLSTATE (`code`), e.g. `"42704"` unknown queue, `"22023"` bad
  argument, `"23514"` contract violation, `"55000"` lease lost, `"57014"` cancelled.
  """
  defexception [:code, :message, :detail, :hint]

  @type t :: %__MODULE__{
          code: String.t(),
          message: String.t(),
          detail: String.t() | nil,
          hint: String.t() | nil
        }

  @impl true
  def message(%__MODULE__{code: code, message: message}), do: "#{message} (SQLSTATE #{code})"

  @doc false
  def from_fields(fields) do
    get = fn key ->
      case List.keyfind(fields, key, 0) do
        {^key, v} -> List.to_string(v)
        nil -> nil
      end
    end

    %__MODULE__{
      code: get.(:code),
      message: get.(:message),
      detail: get.(:detail),
      hint: get.(:hint)
    }
  end

  @doc false
  def rolled_back,
    do: %__MODULE__{code: "40000", message: "the transaction was rolled back at COMMIT"}
end
