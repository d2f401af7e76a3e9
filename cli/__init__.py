"""The ``scconv`` command-line interface (installed as ``scconv_surgery.cli``).

It parses options, calls the library and renders; nothing here decides anything.
"""
