defmodule Pgflow.Message do
  @moduledoc "A leased message, as `Pgflow.read/3` returns it."
  defstruct [:id, :read_ct, :enqueued_at, :vt, :payload, :headers]

  @type t :: %__MODULE__{
          id: integer(),
          read_ct: integer(),
          enqueued_at: String.t(),
          vt: String.t(),
          payload: map(),
          headers: map() | nil
        }

  @doc false
  def from_row([id, read_ct, enqueued_at, vt, message, headers]) do
    %__MODULE__{
      id: String.to_integer(id),
      read_ct: String.to_integer(read_ct),
      enqueued_at: enqueued_at,
      vt: vt,
      payload: Pgflow.decode(message),
      headers: Pgflow.decode(headers)
    }
  end
end
