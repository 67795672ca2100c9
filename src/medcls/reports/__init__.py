"""Reports: what an evaluation or a data check looks like to a reader.

:mod:`.kit` is the one HTML and number-formatting kit (page, stylesheet, sections, tables, embedded
figures, value and CI formats); :mod:`.evaluation` writes a run's ``report.html``, :mod:`.model_card`
its ``model_card.md``, :mod:`.plots` the figures, and :mod:`.data_check` the data check's
``report.json`` and ``report.html``. Reports read runs, metrics and data; they never evaluate.
"""
