"""wqsim's benchmark suite (not part of the installed package)."""
