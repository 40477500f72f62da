#!/bin/sh
# Stand-in for the AWS Lambda base image's /lambda-entrypoint.sh, with the same contract: the
# handler is the one argument; inside Lambda (AWS_LAMBDA_RUNTIME_API set) run the runtime
# interface client, elsewhere run it under the Runtime Interface Emulator.
# The emulator listens on 127.0.0.1 only (RIE_PORT, default 8080; its Runtime API for the client
# on RIE_RUNTIME_API_PORT, default 9001): containers here share the host's network.
if [ $# -ne 1 ]; then
    echo "entrypoint requires the handler name to be the first argument" >&2
    exit 142
fi
export _HANDLER="$1"

if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
    exec /usr/local/bin/aws-lambda-rie \
        --runtime-interface-emulator-address "127.0.0.1:${RIE_PORT:-8080}" \
        --runtime-api-address "127.0.0.1:${RIE_RUNTIME_API_PORT:-9001}" \
        /var/lang/bin/python -m awslambdaric "$@"
else
    exec /var/lang/bin/python -m awslambdaric "$@"
fi
