"""A small OpenID Connect provider for the single sign-on tests: a Django project on django-oauth-toolkit, run as a
subprocess (server.py). Its users live in a JSON file the tests rewrite (store.py), so a test changes someone's
email, groups or verified flag between two sign-ins without restarting it."""
