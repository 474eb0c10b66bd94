"""response_format json_object/json_schema parsed into one constraint, or a clear error."""

import pytest

from serving.engines.structured import FormatError, StructuredOutput, structured_output
from serving.protocol import ResponseFormat

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}


def test_response_format_becomes_one_constraint_or_a_clear_error():
    assert structured_output(None) is None
    assert structured_output(ResponseFormat(type="text")) is None
    assert structured_output(ResponseFormat(type="json_object")) == StructuredOutput("json_object")
    spec = ResponseFormat(type="json_schema", json_schema={"name": "reply", "schema": SCHEMA, "strict": True})
    assert structured_output(spec) == StructuredOutput("json_schema", SCHEMA)
    with pytest.raises(FormatError, match="'json_schema.schema'"):
        structured_output(ResponseFormat(type="json_schema", json_schema={"name": "reply"}))
    with pytest.raises(FormatError, match="with a 'name'"):
        structured_output(ResponseFormat(type="json_schema"))
