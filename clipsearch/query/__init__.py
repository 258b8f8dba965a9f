"""Query: the query language (``grammar``), query -> vector (``vector``), filters parsed once
(``filters``), ranking and result options (``rank``), and duplicates. Searching never writes.
"""
