"""Generic report writers (JUnit XML, self-contained HTML) that stages fill with their own records."""
