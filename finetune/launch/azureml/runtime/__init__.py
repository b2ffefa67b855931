"""What runs inside AML jobs: the pipeline's own steps, their hand-on files, AML registry and endpoint."""
