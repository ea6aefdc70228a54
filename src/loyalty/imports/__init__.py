"""Bulk CSV imports of members and of point grants, run as resumable background jobs."""
