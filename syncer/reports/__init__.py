"""The report commands: `syncer files`, `syncer events`, `syncer runs`.

`queries` turns the user's filters into one SELECT per report; `output` streams that
SELECT's rows from a server-side cursor into a table, JSON lines or CSV; `options`
holds the click options the commands share.
"""

from syncer.reports.output import Format, print_report, write_report
from syncer.reports.queries import (
    Filters,
    Report,
    events_report,
    files_report,
    parse_since,
    runs_report,
)

__all__ = [
    "Filters",
    "Format",
    "Report",
    "events_report",
    "files_report",
    "parse_since",
    "print_report",
    "runs_report",
    "write_report",
]
