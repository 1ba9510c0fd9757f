"""The worker pool: an asyncio process that drains one Redis queue."""
