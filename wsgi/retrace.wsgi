# mod_wsgi entry point: WSGIScriptAlias points here (see httpd/retrace.conf).
import logging

from retrace_server.wsgi.app import LazyApplication

logging.basicConfig(level=logging.INFO, format="retrace-server: %(levelname)s %(name)s: %(message)s")
application = LazyApplication()
