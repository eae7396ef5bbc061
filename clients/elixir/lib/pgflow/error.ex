defmodule Pgflow.Error do
  @moduledoc """
  A server error with its SQLSTATE (`code`), e.g. `"42704"` unknown queue, `"22023"` bad
  argument, `"23514"` contract violation, `"55000"` lease lost, `"57014"` cancelled, `"08006"`
  connection lost. `unknown_outcome` is true when the call may have committed (a commit whose
  wait for the synchronous standby was cancelled): not a success, send again with the same
  `dedup_key`. (A lost connection is as unknown; `unknown_outcome` says that the server itself
  reported it. Only calls in autocommit on a direct connection can see it: the driver's simple
  protocol, used for `transaction/2`'s COMMIT and by pooled connections, drops notices.)
  """
  defexception [:code, :message, :detail, :hint, unknown_outcome: false]

  @type t :: %__MODULE__{
          code: String.t(),
          message: String.t(),
          detail: String.t() | nil,
          hint: String.t() | nil,
          unknown_outcome: boolean()
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
