"""AWS Lambda functions: the HTTP API and the scheduler tick."""
