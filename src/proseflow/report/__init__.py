"""The report pages (what a user looks at): self-contained offline HTML, one module per page, built from one
kit (:mod:`proseflow.report.kit`) and the metric registry (:mod:`proseflow.evaluation.registry`).

- :mod:`~proseflow.report.system_page`: one page per test system (``write_system_report``);
- :mod:`~proseflow.report.summary`: the summary page and the paper's tables (``write_summary``, ``write_tables``);
- :mod:`~proseflow.report.budget_page`: MD vs flow at equal cost (``write_budget_page``);
- :mod:`~proseflow.report.temperature_page`: temperature transfer (``write_temperature_page``).
"""
