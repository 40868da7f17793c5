"""retrace-server-reposync: fill a release repository from its mirrors."""
