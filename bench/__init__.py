"""`make bench`: figures for each stage, each beside a baseline measured in the same run."""
