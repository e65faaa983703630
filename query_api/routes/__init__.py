"""HTTP routes; thin: parse, authorise, call the repository, serialise."""
