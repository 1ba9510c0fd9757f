#!/bin/bash
# Runs inside LocalStack once it is ready (docker-compose mounts this directory): the
# artifacts bucket the workers write to, and the sender SES must know before it sends.
set -euo pipefail
awslocal s3 mb s3://ajs-artifacts || true
awslocal ses verify-email-identity --email-address "${EMAIL_SENDER:-no-reply@example.com}"
