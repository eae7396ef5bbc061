defmodule Pgflow.PayloadTest do
  # The encoder and the handlers' view of a payload, without a server.
  use ExUnit.Case, async: true
  alias Pgflow.Payload
  alias Pgflow.Test.{Derived, Money, Partial, Private}

  defp json!(term) do
    assert {:ok, text} = Payload.encode(term)
    Pgflow.decode(text)
  end

  test "seed 000's message types travel with timestamp: DateTime.utc_now()" do
    now = DateTime.utc_now()

    assert %{
             "type" => "consensus_result",
             "votes" => %{"singularity_1" => "approve"},
             "confidence" => 0.95,
             "timestamp" => ts
           } =
             json!(%{
               type: "consensus_result",
               votes: %{singularity_1: "approve"},
               confidence: 0.95,
               timestamp: now
             })

    assert {:ok, ^now, 0} = DateTime.from_iso8601(ts)
  end

  test "NaiveDateTime, Date and Time as ISO 8601; nil as null; atoms as strings" do
    assert json!(%{
             n: ~N[2026-12-07 10:00:00.5],
             d: ~D[2026-12-07],
             t: ~T[10:00:01],
             none: nil,
             status: :approved,
             null: :null,
             list: [1, "a", true]
           }) == %{
             "n" => "2026-12-07T10:00:00.5",
             "d" => "2026-12-07",
             "t" => "10:00:01",
             "none" => nil,
             "status" => "approved",
             "null" => "null",
             "list" => [1, "a", true]
           }
  end

  test "structs that opt in: @derive, @derive with except:, an implementation of their own" do
    at = ~U[2026-12-07 10:00:00Z]

    assert json!(%{p: %Derived{id: 1, at: at}}) == %{
             "p" => %{"id" => 1, "at" => "2026-12-07T10:00:00Z"}
           }

    assert json!(%Partial{id: 2, secret: "s"}) == %{"id" => 2}

    assert json!([%Money{cents: 1050, currency: "EUR"}]) == [
             %{"amount" => "10.50", "currency" => "EUR"}
           ]
  end

  test "another struct is refused with its module and its path in the payload" do
    assert {:error, %Pgflow.Error{code: "22023", message: msg}} =
             Payload.encode(%{code_change: %{owners: [%{id: 1}, %Private{token: "t"}]}})

    assert msg =~ "payload.code_change.owners[1]"
    assert msg =~ "%Pgflow.Test.Private{}"
    assert msg =~ "Pgflow.Encodable"
    refute msg =~ ~s("t")

    # Calling the protocol itself on such a struct says what to do.
    assert_raise Protocol.UndefinedError, ~r/derive or implement/, fn ->
      Pgflow.Encodable.to_payload(%Private{})
    end
  end

  test "a %Decimal{} without the Decimal library loaded is refused, named" do
    # Decimal is not installed here: its struct can only be spelled as a map.
    refute Code.ensure_loaded?(Decimal)

    assert {:error, %Pgflow.Error{message: msg}} =
             Payload.encode(%{"price" => %{__struct__: Decimal, sign: 1, coef: 5, exp: -1}})

    assert msg =~ ~s(payload["price"]) or msg =~ "payload.price"
    assert msg =~ "%Decimal{}"
  end

  test "tuples, pids, non-UTF-8 text, improper lists and clashing keys are refused with paths" do
    for {term, path, what} <- [
          {%{a: {1, 2}}, "payload.a", "{1, 2}"},
          {%{a: [self()]}, "payload.a[0]", "#PID"},
          {%{"bad key" => <<255>>}, ~s(payload["bad key"]), "not UTF-8"},
          {%{a: [1 | 2]}, "payload.a", "improper"},
          {%{{:k} => 1}, "payload", "the key {:k}"},
          {%{:a => 1, "a" => 2}, "payload", ~s(the key "a" appears twice)}
        ] do
      assert {:error, %Pgflow.Error{code: "22023", message: msg}} = Payload.encode(term)
      assert msg =~ "cannot send #{path}:", msg
      assert msg =~ what, msg
    end

    assert {:error, %Pgflow.Error{message: "cannot send headers." <> _}} =
             Payload.encode(%{x: {}}, "headers")
  end

  test "both_keys: strings always, atoms only where the atom exists; nothing is created" do
    fresh = "pgflow_no_such_atom_#{System.unique_integer([:positive])}"

    view =
      Payload.both_keys(%{
        "proposal_id" => "p1",
        "votes" => %{"singularity_1" => "approve"},
        "items" => [%{"status" => "approved"}],
        fresh => 1
      })

    assert view.proposal_id == "p1" and view["proposal_id"] == "p1"
    assert %{"status" => "approved"} = hd(view.items)
    assert hd(view.items).status == "approved"
    assert view.votes.singularity_1 == "approve"
    assert view[fresh] == 1
    assert_raise ArgumentError, fn -> String.to_existing_atom(fresh) end

    # Sent on again, each key goes once.
    assert {:ok, text} = Payload.encode(view)

    assert Pgflow.decode(text) == %{
             "proposal_id" => "p1",
             "votes" => %{"singularity_1" => "approve"},
             "items" => [%{"status" => "approved"}],
             fresh => 1
           }
  end
end
