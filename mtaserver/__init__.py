"""mtaserver: a high-volume mail transfer agent on Twisted, in the class of PowerMTA.

`__version__` is the one place the version is written; setup.cfg reads it with
`attr:`, and `show version`, `mtactl --version` and `twistd mtaserver --version`
print it.
"""

__version__ = "0.2.0"
