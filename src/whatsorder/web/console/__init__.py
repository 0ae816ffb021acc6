"""The operator console at ``/console`` (``app.build_console``)."""
