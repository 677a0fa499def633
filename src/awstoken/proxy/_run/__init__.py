"""Running the proxy as processes: ``serve`` (one process, or a supervisor of N workers),
``supervisor`` (the worker processes), ``worker`` (one worker's fresh interpreter) and
``process`` (event loop, signals, malloc and open-file tuning)."""
