"""What a run tells the chemist: live progress, where the time went, the report.

``progress`` counts calculations per order while the run goes on, ``profile`` splits a
run's wall time into phases, ``report`` makes the summary table and the HTML report from a
result. Imports results and below (never deploy or workflows).
"""
