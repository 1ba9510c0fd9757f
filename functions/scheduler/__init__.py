"""The scheduler function, triggered by an EventBridge schedule."""
