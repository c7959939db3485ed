"""The process side of tapster: load the app, set up the process, run the loop, stop cleanly."""
