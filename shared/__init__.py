"""Code shared by the API function, the scheduler function and the worker pool."""
