# Property-based test of the REST API against its own /openapi.json.
bash gateway/schemathesis.sh
