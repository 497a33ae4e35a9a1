#!/usr/bin/env bash
# Session-store measurements (requests per appended message, restore time of 1,000 messages)
# against the local S3/DynamoDB server, which this script starts and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p agent-tests --bin store_bench
trap 'scripts/aws-local.sh stop' EXIT
AWS_ENDPOINT_URL=$(scripts/aws-local.sh start)
export AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
./target/release/store_bench "$@"
