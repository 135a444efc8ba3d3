"""A toy headstart plugin, written as a plugin author would (see tests/test_extending.py):
a head kind, an export format and a backbone family, each registered through an entry
point of toy_plugin-0.1.dist-info/entry_points.txt. Nothing under src/ knows it."""
