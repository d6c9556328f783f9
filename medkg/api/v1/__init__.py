"""The v1 API, one module per resource: each view parses its input serializer, calls one service or selector,
and answers with the output serializer that the OpenAPI schema documents (so the schema and the body are one)."""
