"""Web: the local server and its page (``server``, ``static/``), and the self-contained HTML gallery."""
