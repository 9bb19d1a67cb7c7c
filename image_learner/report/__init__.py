"""Report stage internals: plots, image galleries and the HTML templates (report_builder.py is the entry)."""
