"""The web app's assets: Jinja2 templates and the static files (CSS, JS) shipped in the package."""
