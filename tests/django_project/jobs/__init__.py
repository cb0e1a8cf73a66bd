"""An app with management commands that record what they do in an event log."""
