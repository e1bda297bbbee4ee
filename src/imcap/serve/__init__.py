"""`imcap serve`: the web service (app.py) with its settings (settings.py), safe upload reading (uploads.py),
micro-batching (batching.py) and web page (static/)."""
