#!/usr/bin/env bash
# Soak test: two replicas racing on one session for N rounds (default 1,000) on each backend
# (file, S3, DynamoDB), reporting lost and duplicated messages. Starts and stops the local
# S3/DynamoDB server.
#
#   scripts/soak.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p agent-tests --bin soak
trap 'scripts/aws-local.sh stop' EXIT
AWS_ENDPOINT_URL=$(scripts/aws-local.sh start)
export AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
./target/release/soak "${1:-1000}"
