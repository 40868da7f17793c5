"""The HTTP face of retrace-server: webob handlers and the Apache launcher."""
