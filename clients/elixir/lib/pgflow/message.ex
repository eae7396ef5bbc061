defmodule Pgflow.Message do
  @moduledoc "A leased message, as `Pgflow.read/3` returns it."
  defstruct [:id, :read_ct, :enqueued_at, :vt, :payload, :headers, :receipt]

  @type t :: %__MODULE__{
          id: integer(),
          read_ct: integer(),
          enqueued_at: String.t(),
          vt: String.t(),
          payload: map(),
          headers: map() | nil,
          # This delivery's lease receipt: pass it to archive, archive_read, nack and set_vt so
          # they act on this delivery only.
          receipt: integer()
        }

  @doc false
  def from_row([id, read_ct, enqueued_at, vt, message, headers, receipt]) do
    %__MODULE__{
      id: String.to_integer(id),
      read_ct: String.to_integer(read_ct),
      enqueued_at: enqueued_at,
      vt: vt,
      payload: Pgflow.decode(message),
      headers: Pgflow.decode(headers),
      receipt: String.to_integer(receipt)
    }
  end
end
