"""The checks every table-shaped target runs before any I/O (``connectors.tables``): declared
tables and columns, the scope columns no plan may write, typed values within the size cap, and
errors that name fields, never values."""

from __future__ import annotations

import pytest

from app.core.errors import PlanValidationError
from connectors.memory import MemoryConnector
from connectors.tables import TableOptions, UpsertRow

DECLARED = {"patients": {"email": "text", "active": "boolean", "dob": "date", "visits": "integer"}}
SECRET = "zoe.nunez@example.com"


def schema(tables=DECLARED, **options):
    return MemoryConnector.schema("warehouse", TableOptions(tables=tables, **options))


def upsert(values: dict, table: str = "patients") -> dict:
    return {"table": table, "key": "42", "patient_id": "42", "values": values}


def refused(target, values: dict, table: str = "patients") -> str:
    with pytest.raises(PlanValidationError) as info:
        target.validate("upsert_row", upsert(values, table), "42")
    return str(info.value)


def test_values_already_in_their_columns_form_are_kept_as_they_are():
    values = {"email": "zoe@example.com", "active": True, "dob": "1980-02-03", "visits": 3}
    parsed = schema().validate("upsert_row", upsert(values), "42")
    assert isinstance(parsed, UpsertRow)
    assert parsed.values == values


def test_a_scalar_in_a_text_column_is_written_as_text_without_touching_the_plan():
    args = upsert({"email": True, "visits": 3})
    parsed = schema().validate("upsert_row", args, "42")
    assert parsed.values == {"email": "true", "visits": 3}
    assert args["values"] == {"email": True, "visits": 3}  # the plan's own arguments


def test_undeclared_tables_and_columns_are_refused_naming_them():
    assert "not declared" in refused(schema(), {"email": "a"}, table="notes")
    assert "patients.phone: column not declared" in refused(schema(), {"phone": "a"})


@pytest.mark.parametrize("column", ["key", "patient_id", "integration_id", "run_id", "synced_at"])
def test_the_scope_columns_are_never_writable(column):
    # the scope comes from the write, never from the plan: refused whether or not the target
    # declares tables, and a declaration may not name them either
    assert "not a writable column name" in refused(schema(), {column: "x"})
    assert "not a writable column name" in refused(schema(tables=None), {column: "x"})
    with pytest.raises(ValueError, match="reserved"):
        TableOptions(tables={"patients": {column: "text"}})


def test_a_declaration_that_bypassed_validation_still_guards_its_names():
    # model_construct skips the options' own checks: the per-write checks still hold
    options = TableOptions.model_construct(
        tables={"patients": {"patient_id": "text", "Bad Name": "text"}},
        mode="upsert",
        max_value_bytes=100,
    )
    target = MemoryConnector.schema("warehouse", options)
    assert "not a writable column name" in refused(target, {"patient_id": "43"})
    assert "patients.<?>: not a writable column name" in refused(target, {"Bad Name": "x"})


def test_a_declaration_changed_in_place_is_checked_again():
    tables = {"patients": {"email": "text", "dob": "date"}}
    target = schema(tables=tables)
    target.validate("upsert_row", upsert({"dob": "1980-02-03"}), "42")
    del target.options.tables["patients"]["dob"]
    assert "column not declared" in refused(target, {"dob": "1980-02-03"})
    target.options.tables["patients"]["dob"] = "boolean"
    assert "a str is not a boolean" in refused(target, {"dob": "1980-02-03"})


def test_a_name_that_is_not_an_identifier_is_not_repeated():
    text = refused(schema(), {SECRET: "x"})
    assert SECRET not in text
    assert "<?>" in text
    text = refused(schema(tables=None), {SECRET: "x"})
    assert SECRET not in text


def test_without_declarations_any_identifier_is_written_as_text():
    parsed = schema(tables=None).validate("upsert_row", upsert({"anything": 5}), "42")
    assert parsed.values == {"anything": "5"}


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"active": "yes"}, "a str is not a boolean"),
        ({"visits": 2.5}, "a float is not a integer"),
        ({"visits": True}, "a bool is not a integer"),
        ({"dob": "03/02/1980"}, "not an ISO date"),
    ],
)
def test_typed_columns_refuse_other_values_without_quoting_them(values, problem):
    text = refused(schema(), values)
    assert problem in text
    assert str(next(iter(values.values()))) not in text.replace(problem, "")


def test_the_size_cap_counts_utf8_bytes_for_ascii_and_other_text():
    target = schema(max_value_bytes=10)
    target.validate("upsert_row", upsert({"email": "a" * 10}), "42")
    target.validate("upsert_row", upsert({"email": "é" * 5}), "42")  # 10 bytes
    assert "longer than 10 bytes" in refused(target, {"email": "a" * 11})
    assert "longer than 10 bytes" in refused(target, {"email": "é" * 6})  # 6 chars, 12 bytes
    assert "longer than 10 bytes" in refused(target, {"email": 10**11})  # as text: 12 chars
    text = refused(target, {"email": "a" * 11})
    assert "aaaa" not in text


def test_a_lone_surrogate_is_not_text_any_target_can_store():
    assert "not valid Unicode text" in refused(schema(), {"email": "a\ud800"})
