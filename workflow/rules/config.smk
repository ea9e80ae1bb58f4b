"""The config, typed and validated against the schema before any rule reads it."""

import json
import re

import yaml
from snakemake.utils import validate

SCHEMA = os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")
with open(SCHEMA) as f:
    SCHEMA_TREE = yaml.safe_load(f)


def field_schema(schema, key):
    """The schema of one key of an object: its own properties, those of the definition its $ref
    names (#/$defs/<name>), a matching patternProperties entry, or additionalProperties.
    """
    fields = dict(schema.get("properties", {}))
    if "$ref" in schema:
        fields.update(
            SCHEMA_TREE["$defs"][schema["$ref"].removeprefix("#/$defs/")]["properties"]
        )
    if key in fields:
        return fields[key]
    for pattern, sub in schema.get("patternProperties", {}).items():
        if re.search(pattern, key):
            return sub
    other = schema.get("additionalProperties")
    return other if isinstance(other, dict) else {}


def typed(value, schema):
    """A value as the schema types it: --config's nested values arrive as strings (`train='{"steps":
    5}'` gives steps '5'), so a string where the schema wants a number or a boolean is parsed.
    """
    if isinstance(value, dict):
        return {key: typed(v, field_schema(schema, key)) for key, v in value.items()}
    if isinstance(value, list):
        return [typed(v, schema.get("items", {})) for v in value]
    types = schema.get("type", [])
    types = {types} if isinstance(types, str) else set(types)
    if (
        isinstance(value, str)
        and types & {"integer", "number", "boolean"}
        and "string" not in types
    ):
        try:
            return json.loads(
                value.lower() if value.lower() in ("true", "false") else value
            )
        except ValueError:
            return value  # left for the schema to name
    return value


config.update(typed(config, SCHEMA_TREE))
validate(config, SCHEMA)
