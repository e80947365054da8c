"""The web console at /console/: server-rendered pages (Jinja2) with htmx for the live parts.

Pages call the same service functions as the API, in the threadpool; nothing here speaks HTTP
to the server itself. `routes.router` is what the app includes.
"""
