"""The job state machine: its states (``status``), every transition (``lifecycle``), the
retry rule (``backoff``) and the verbs callers use (``service``)."""
