"""What people call: the command line, the notebook cell functions, the report views and
the Jupyter kernel specs."""
