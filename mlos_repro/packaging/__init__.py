"""Stage tools that build .debs and APT repositories (run inside the sandbox)."""
