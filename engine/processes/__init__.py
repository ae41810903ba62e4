"""The processes of a server with several workers: supervisor, workers, observer."""
