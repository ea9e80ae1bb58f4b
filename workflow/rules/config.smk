"""The config, typed and validated against the schema before any rule reads it."""

import json

import yaml
from snakemake.utils import validate

SCHEMA = os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")


def typed(value, schema):
    """A value as the schema types it: --config's nested values arrive as strings (`train='{"steps":
    5}'` gives steps '5'), so a string where the schema wants a number or a boolean is parsed.
    """
    if isinstance(value, dict):
        fields, other = schema.get("properties", {}), schema.get("additionalProperties")
        other = other if isinstance(other, dict) else {}
        return {key: typed(v, fields.get(key, other)) for key, v in value.items()}
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


with open(SCHEMA) as f:
    config.update(typed(config, yaml.safe_load(f)))
validate(config, SCHEMA)
