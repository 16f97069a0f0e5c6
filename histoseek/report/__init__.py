"""Everything people see: progress bars, tables, JSON, the HTML gallery and contact sheets."""
