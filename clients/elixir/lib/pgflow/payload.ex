defmodule Pgflow.Payload do
  @moduledoc """
  Payloads on their way in and out.

  **Out** (`encode/1`, used by `Pgflow.send/4`, `Pgflow.publish_topic/4` and map parameters of
  `Pgflow.query/3`): maps (atom, string or number keys), lists, strings, numbers, booleans,
  `nil` and other atoms (as strings), and these structs:

    * `DateTime`, `NaiveDateTime`, `Date`, `Time`: ISO 8601 strings
      (`DateTime.utc_now()` becomes `"2026-12-07T10:00:00.123456Z"`, a JSON Schema
      `date-time`);
    * `Decimal`: its string form (`Decimal.to_string/1`), when the Decimal library is loaded;
    * a struct that opts in through `Pgflow.Encodable` (`@derive Pgflow.Encodable`, or an
      implementation of its own).

  Anything else (another struct, a tuple, a pid, a string that is not UTF-8) is refused before
  the call reaches the server: `{:error, %Pgflow.Error{code: "22023"}}` whose message names
  the value and its path in the payload (`payload.code_change.owner`, `payload.items[2]`).
  A map may hold the same key as an atom and as a string only with equal values (a payload
  from `both_keys/1` sent on again), which then appears once.

  **In** (`both_keys/1`): the payload as the seeds' handlers read it.
  """

  # Decimal is optional: its struct is recognized by name and converted only when the library
  # is loaded, so pgflow neither depends on it nor warns when it is absent.
  @compile {:no_warn_undefined, Decimal}

  alias Pgflow.Error

  @doc """
  JSON text for `term` (`{:ok, binary}`), or `{:error, %Pgflow.Error{code: "22023"}}` naming
  what cannot be encoded and where. `root` names the value in the error (`"payload"`,
  `"headers"`).
  """
  @spec encode(term(), String.t()) :: {:ok, binary()} | {:error, Error.t()}
  def encode(term, root \\ "payload") do
    {:ok, term |> to_json(root) |> :jiffy.encode()}
  catch
    {:pgflow_refused, message} -> {:error, %Error{code: "22023", message: message}}
  end

  @doc """
  The payload with every key as a string and, where an atom of that name already exists, as
  that atom too (nested maps and lists alike), so a handler can write `message.proposal_id`,
  `message["votes"]` and `%{"status" => "approved"} = message` on one map. No atom is created
  from what arrives: a key whose atom does not exist stays a string only. The atoms a
  handler reads exist once the modules that hold its code are loaded: a release loads them
  all at boot, and a consumer with `deliver: :payload` loads its handler's application's
  modules when it starts. Enumerating the map sees such keys twice; `encode/1` sends them
  once.
  """
  @spec both_keys(term()) :: term()
  def both_keys(map) when is_map(map) do
    Enum.reduce(map, %{}, fn {k, v}, acc ->
      v = both_keys(v)
      acc = Map.put(acc, k, v)

      case existing_atom(k) do
        nil -> acc
        atom -> Map.put(acc, atom, v)
      end
    end)
  end

  def both_keys(list) when is_list(list), do: Enum.map(list, &both_keys/1)
  def both_keys(other), do: other

  defp existing_atom(key) when is_binary(key) do
    String.to_existing_atom(key)
  rescue
    ArgumentError -> nil
  end

  defp existing_atom(_key), do: nil

  # ---- the encoder: a term as jiffy's input, or a throw naming what cannot go ----

  defp to_json(nil, _path), do: :null
  defp to_json(b, _path) when is_boolean(b), do: b
  # As strings: jiffy would write the atom :null as JSON null.
  defp to_json(a, _path) when is_atom(a), do: Atom.to_string(a)
  defp to_json(n, _path) when is_number(n), do: n

  defp to_json(s, path) when is_binary(s) do
    if String.valid?(s), do: s, else: refuse(path, "#{inspect(s)} is not UTF-8 text")
  end

  defp to_json(%DateTime{} = t, _path), do: DateTime.to_iso8601(t)
  defp to_json(%NaiveDateTime{} = t, _path), do: NaiveDateTime.to_iso8601(t)
  defp to_json(%Date{} = d, _path), do: Date.to_iso8601(d)
  defp to_json(%Time{} = t, _path), do: Time.to_iso8601(t)

  defp to_json(%{__struct__: Decimal} = d, path) do
    if Code.ensure_loaded?(Decimal),
      do: Decimal.to_string(d),
      else: refuse(path, "%Decimal{} cannot be encoded: the Decimal library is not loaded")
  end

  defp to_json(%{__struct__: module} = struct, path) do
    case Pgflow.Encodable.impl_for(struct) do
      Pgflow.Encodable.Any ->
        refuse(
          path,
          "%#{inspect(module)}{} cannot be encoded: a struct travels only if it opts in " <>
            "(@derive Pgflow.Encodable, or defimpl Pgflow.Encodable); DateTime, " <>
            "NaiveDateTime, Date, Time and Decimal are encoded as strings"
        )

      impl ->
        to_json(impl.to_payload(struct), path)
    end
  end

  defp to_json(map, path) when is_map(map) do
    Enum.reduce(map, %{}, fn {k, v}, acc ->
      key = key(k, path)
      value = to_json(v, key_path(path, key))

      case acc do
        %{^key => ^value} ->
          acc

        %{^key => _} ->
          refuse(path, "the key #{inspect(key)} appears twice with different values")

        _ ->
          Map.put(acc, key, value)
      end
    end)
  end

  defp to_json(list, path) when is_list(list) do
    if not proper?(list), do: refuse(path, "#{inspect(list)} is an improper list")

    list
    |> Enum.with_index()
    |> Enum.map(fn {v, i} -> to_json(v, "#{path}[#{i}]") end)
  end

  defp to_json(other, path), do: refuse(path, "#{inspect(other)} cannot be encoded as JSON")

  defp key(k, _path) when is_atom(k), do: Atom.to_string(k)
  defp key(k, _path) when is_number(k), do: to_string(k)

  defp key(k, path) when is_binary(k) do
    if String.valid?(k), do: k, else: refuse(path, "the key #{inspect(k)} is not UTF-8 text")
  end

  defp key(k, path), do: refuse(path, "the key #{inspect(k)} is not a string, atom or number")

  defp key_path(path, key) do
    if key =~ ~r/^[A-Za-z_][A-Za-z0-9_]*$/, do: "#{path}.#{key}", else: "#{path}[#{inspect(key)}]"
  end

  defp proper?([]), do: true
  defp proper?([_ | tail]), do: proper?(tail)
  defp proper?(_), do: false

  defp refuse(path, why), do: throw({:pgflow_refused, "cannot send #{path}: #{why}"})
end
