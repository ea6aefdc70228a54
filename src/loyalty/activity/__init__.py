"""Member activity: events from e-commerce and the CRM, each member's facts, earning rules."""
