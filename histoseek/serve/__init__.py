"""`histoseek serve`: a local search service and web page over one index, with its model loaded
once. Library code only; the command in histoseek/cli/serve.py builds and runs it."""
