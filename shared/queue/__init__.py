"""Redis, derived state that PostgreSQL can always rebuild: the ready queues, the delayed
set, leases and limits (``redis_queue`` with its Lua scripts in ``lua/``) and the per-job
Redlock (``locks``)."""
