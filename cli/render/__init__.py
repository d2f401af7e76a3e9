"""Rich renderers: pure functions from library values to tables and lines, one module per command
(``convert``, ``report``, ``calibrate``, ``verify``, ``models``); what several share is in
``common``. No decisions here: what to warn about comes from the library as values.
"""
