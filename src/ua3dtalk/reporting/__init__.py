"""ua3dtalk.reporting: the paper's tables from saved runs (torch-free).

* :mod:`.runs` — metric columns, table specs, :class:`~.runs.Run` readers, aggregation into rows;
* :mod:`.tables` — published numbers, claims, rendering (:func:`~.tables.make_table`).

``ua3dtalk-tables`` (:mod:`ua3dtalk.cli.tables`) is the command line over them.
"""
