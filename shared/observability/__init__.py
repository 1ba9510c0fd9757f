"""What the system tells its operators: Prometheus metrics, the Pushgateway, counters
summed across processes in Redis, and JSON logs."""
