"""Analysis: what a core or vmcore says by itself, and what gdb and crash make of it."""
